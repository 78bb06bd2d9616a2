"""Test-only crash points: a server kills itself (SIGKILL) at a named moment.

Off by default. Only when the environment variable ``PPML_TEST_CRASH_FILE``
names a file, and that file holds the name of the point reached (e.g.
``dataset:middle``), does the process kill itself there, as a crash would:
no clean-up, no reply. The crash-consistency tests
(``tests/integration/test_upload_crashes.py``) use it to stop an upload at an
exact moment instead of relying on timing. Points:

- ``dataset:early``: the header is checked, no row has arrived;
- ``dataset:middle``: more than half of the rows have arrived;
- ``model:early``: the request arrived, nothing is checked or written;
- ``<noun>:staging``: a record's metadata is written, its shares are not;
- ``<kind>:late``: the upload is staged on disk, not yet announced to the leader;
- ``<kind>:commit``: the leader's commit decision arrived, not yet applied;
- ``<kind>:committed``: the commit is applied, the client has no reply yet.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "PPML_TEST_CRASH_FILE"


def crash_point(name: str) -> None:
    """SIGKILL this process if the test crash file names ``name``; nothing otherwise."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        wanted = Path(path).read_text().strip()
    except OSError:
        return
    if wanted == name:
        log.warning("test crash point %r reached: this server kills itself now", name)
        os.kill(os.getpid(), signal.SIGKILL)
