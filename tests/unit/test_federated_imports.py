"""The client-side federated and DP modules run on a data owner's machine without the MPC stack."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "ppml.training.privacy",
    "ppml.training.har",
    "ppml.training.federated",
    "ppml.training.ckks",
)


def test_no_crypten_and_no_server_imports() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'crypten'"
        " or m.startswith('ppml.servers'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
