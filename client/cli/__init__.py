"""The ``ppml`` command: ``main`` is the entry point (``ppml``, ``python -m ppml.client.cli``).

* :mod:`.app` — the parser, the cluster, model, predict and dashboard commands
  (its docstring, shown by ``ppml --help``, lists every command with examples);
* :mod:`.data`, :mod:`.training`, :mod:`.federation` (and its text,
  :mod:`.federation_text`), :mod:`.deploy` — one command group each;
* :mod:`.common` — what the command modules share (``CliError``, connecting, tables).
"""

from ppml.client.cli.app import dashboard_command, main

__all__ = ["dashboard_command", "main"]
