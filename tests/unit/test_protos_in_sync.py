"""The committed generated code under proto/ppml/v1 is exactly what the generator makes."""

from __future__ import annotations

from pathlib import Path

import pytest

import ppml.proto
from ppml.proto.generate import generate, proto_files

COMMITTED = Path(ppml.proto.__file__).resolve().parent / "ppml" / "v1"
PATTERNS = ("*_pb2.py", "*_pb2_grpc.py", "*.pyi")


def _generated_names(folder: Path) -> set[str]:
    return {p.name for pattern in PATTERNS for p in folder.glob(pattern)}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    generate(out)
    return out / "ppml" / "v1"


def test_every_proto_is_generated(fresh: Path) -> None:
    stems = {p.stem for p in proto_files()}
    assert stems, "no .proto files found"
    expected = {
        f"{stem}{suffix}"
        for stem in stems
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")
    }
    assert _generated_names(fresh) == expected


def test_committed_files_match_generated_set(fresh: Path) -> None:
    missing = _generated_names(fresh) - _generated_names(COMMITTED)
    stale = _generated_names(COMMITTED) - _generated_names(fresh)
    assert not missing, f"generated but not committed: {sorted(missing)} (run make protos)"
    assert not stale, f"committed but no longer generated: {sorted(stale)}"


def test_committed_files_are_byte_identical(fresh: Path) -> None:
    differ = sorted(
        name
        for name in _generated_names(fresh)
        if (COMMITTED / name).exists()
        and (COMMITTED / name).read_bytes() != (fresh / name).read_bytes()
    )
    assert not differ, f"out of date, run `make protos`: {differ}"
