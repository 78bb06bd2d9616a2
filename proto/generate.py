"""Regenerate the Python code for ``proto/ppml/v1/*.proto``.

Run ``python -m ppml.proto.generate`` (or ``make protos``). The output is
committed; ``tests/unit/test_protos_in_sync.py`` fails when regenerating would
change it. Pass an output directory to generate elsewhere (the test does).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
_BIN = Path(sys.executable).parent  # mypy-protobuf's plugins live beside python


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto sources, sorted, relative to ``root``."""
    return sorted(p.relative_to(root) for p in (root / "ppml" / "v1").glob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT) -> None:
    """Write ``*_pb2.py``, ``*_pb2_grpc.py`` and ``.pyi`` stubs under ``out_dir``."""
    include = str(resources.files("grpc_tools") / "_proto")
    (out_dir / "ppml" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={_BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={_BIN / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


def main() -> None:
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)


if __name__ == "__main__":
    main()
