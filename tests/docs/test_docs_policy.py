"""The documentation harness itself: every block is run or says why not, and a broken
block fails the build (tests/docs/harness.py)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from tests.docs.harness import DOCUMENTS, NOT_CODE, ROOT, RUNNABLE, make_sybil

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$", re.MULTILINE)
SKIP = re.compile(r"<!--\s*skip:\s*(?P<action>\w+)(?P<reason>[^>]*?)-->")
CHECKED = ("ini",)  # parsed, not run


def _documents() -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in ROOT.glob(pattern)})


def _blocks(text: str) -> list[tuple[int, str]]:
    """(line, language) of every fenced block's opening fence."""
    found, open_fence = [], None
    for match in FENCE.finditer(text):
        if open_fence is None:
            open_fence = match.group("fence")
            line = text.count("\n", 0, match.start()) + 1
            found.append((line, match.group("info").strip()))
        elif match.group("fence").startswith(open_fence) and not match.group("info").strip():
            open_fence = None
    return found


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_runs_is_checked_or_says_why_not(path: Path) -> None:
    text = path.read_text()
    for line, language in _blocks(text):
        allowed = (*RUNNABLE, *NOT_CODE, *CHECKED)
        assert language in allowed, (
            f"{path.name}:{line}: a block of language {language or '(none)'!r}; use one of "
            f"{allowed} ('text' for pictures and literal protocol text)"
        )
    for skip in SKIP.finditer(text):
        line = text.count("\n", 0, skip.start()) + 1
        reason = skip.group("reason").strip()
        assert skip.group("action") == "next", f"{path.name}:{line}: use 'skip: next \"why\"'"
        assert re.fullmatch(r'"[^"]{10,}"', reason), (
            f"{path.name}:{line}: a skipped block must say why it cannot run here"
        )


def _run(folder: Path, markdown: str) -> None:
    """Run the harness over one markdown file, as pytest would."""
    (folder / "doc.md").write_text(markdown)
    sybil = make_sybil(str(folder), ("*.md",))
    document = sybil.parse(folder / "doc.md")
    assert sybil.setup is not None and sybil.teardown is not None
    sybil.setup(document.namespace)
    try:
        for example in document.examples():
            example.evaluate()
    finally:
        sybil.teardown(document.namespace)


DEPLOY_INIT = """
```bash
ppml deploy init --out ./bundles{comment} \\
    --party hospital-a=10.0.0.1:50051:29500 \\
    --party hospital-b=10.0.0.2:50051:29500 \\
    --dealer dealer=10.0.0.3:29600 --client analyst
test -f bundles/clients/analyst/cluster.toml
```
"""


def test_a_comment_after_a_line_continuing_backslash_fails_the_run(tmp_path: Path) -> None:
    # docs/deploy.md's own block is the version that runs (section 1); this is the
    # mistake that once made it fail when pasted into bash
    with pytest.raises(AssertionError, match="exited with") as failed:
        _run(tmp_path, DEPLOY_INIT.format(comment="   # the first --party is rank 0"))
    assert "--party" in str(failed.value)  # the continuation lines ran as commands of their own


def test_a_failing_command_anywhere_in_a_shell_block_fails_it(tmp_path: Path) -> None:
    _run(tmp_path, "```bash\necho ok > made.txt\n```\n\n```bash\ntest -f made.txt\n```\n")
    for script in ("false\necho after", "false | cat", "echo $UNSET_VARIABLE"):
        with pytest.raises(AssertionError, match="exited with"):
            _run(tmp_path, f"```bash\n{script}\n```\n")


def test_a_failing_python_block_fails_and_a_skip_needs_its_reason(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        _run(tmp_path, "```python\nvalue = 1\n```\n\n```python\nvalue / 0\n```\n")
    skipped = '<!-- skip: next "needs three hosts" -->\n```bash\nexit 1\n```\n'
    from unittest import SkipTest

    with pytest.raises(SkipTest, match="needs three hosts"):
        _run(tmp_path, skipped)


def test_an_ini_block_is_parsed(tmp_path: Path) -> None:
    _run(tmp_path, "```ini\n[Unit]\nDescription=x\n```\n")
    with pytest.raises((AssertionError, configparser.Error), match=r"no section|contains no"):
        _run(tmp_path, "```ini\nnot an ini file\n```\n")
