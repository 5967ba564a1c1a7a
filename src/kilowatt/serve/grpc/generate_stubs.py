"""Regenerate the gRPC stubs from ``grpc_predict_v2.proto`` (needs the dev dependency
``grpcio-tools``)::

    python src/kilowatt/serve/grpc/generate_stubs.py

The proto is KServe's published Open Inference Protocol definition:
https://github.com/kserve/kserve/blob/aaac4e294dae2c7b1aa1886447793f3aa1c30912/python/kserve/kserve/protocol/grpc/grpc_predict_v2.proto
with one change: the model repository messages (and the RepositoryIndex method) take
Triton's wire layout, which Triton's clients speak; KServe's put ``model_name`` in the
field number where Triton's put ``repository_name``.

After ``protoc``, the message module is rewritten to register its types in a descriptor
pool of its own instead of protobuf's default pool: Triton's client ships a compiled copy
of the same ``inference.*`` messages, and two files defining one symbol cannot share the
default pool, so a process using both (a test, a benchmark) would fail at import. The wire
format and the service path (``/inference.GRPCInferenceService/...``) do not depend on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[3]
PROTO = "kilowatt/serve/grpc/grpc_predict_v2.proto"
_DEFAULT_POOL = "_descriptor_pool.Default()"
_OWN_POOL = "_POOL"


def main() -> None:
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(SRC),
            f"--python_out={SRC}", f"--pyi_out={SRC}", f"--grpc_python_out={SRC}", PROTO,
        ],
        check=True,
    )  # fmt: skip
    module = SRC / PROTO.replace(".proto", "_pb2.py")
    text = module.read_text()
    assert text.count(_DEFAULT_POOL) == 1, "protoc's output changed: update this script"
    text = text.replace(
        "_sym_db = _symbol_database.Default()",
        "_sym_db = _symbol_database.Default()\n"
        f"{_OWN_POOL} = _descriptor_pool.DescriptorPool()  # see generate_stubs.py",
    ).replace(_DEFAULT_POOL, _OWN_POOL)
    module.write_text(text)


if __name__ == "__main__":
    main()
