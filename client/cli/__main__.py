"""``python -m ppml.client.cli``: the same as the ``ppml`` command."""

from ppml.client.cli.app import main

main()
