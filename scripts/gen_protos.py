"""Generate the Python stubs for proto/ into OUT_DIR (default: the repo root).

Run by `make proto`; the drift test runs it into a temporary folder and
compares the result with the committed stubs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
BIN_DIR = Path(sys.executable).parent
WELL_KNOWN = Path(protoc.__file__).parent / "_proto"
PACKAGE_DIRS = (
    "llmgw",
    "llmgw/v1",
    "llmgw/backend",
    "llmgw/backend/v1",
    "llmgw/admin",
    "llmgw/admin/v1",
)


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2_grpc.py and their .pyi stubs under out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    for package in PACKAGE_DIRS:
        init = out_dir / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            init.write_text('"""Generated from proto/ by scripts/gen_protos.py; do not edit."""\n')
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        # google/protobuf/*.proto (Struct), shipped inside grpcio-tools.
        f"-I{WELL_KNOWN}",
        # The mypy plugins live beside this interpreter, which may not be on PATH.
        f"--plugin=protoc-gen-mypy={BIN_DIR / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN_DIR / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
