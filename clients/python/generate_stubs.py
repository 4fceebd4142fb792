#!/usr/bin/python3
"""Regenerate conduit_client/_proto from proto/conduit/v1/conduit.proto.

usage: generate_stubs.py [--check]

The stubs are checked in, so that the package installs offline without
protoc; `--check` (run by CTest) fails when they no longer match the proto.
The generated gRPC module imports `conduit.v1.conduit_pb2` by its absolute
name; it is rewritten to a relative import so the stubs live inside this
package, not as a top-level `conduit` package.
"""
import filecmp
import os
import sys
import tempfile

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")
TARGET = os.path.join(HERE, "conduit_client", "_proto")


def generate(out):
    if protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
                    os.path.join(PROTO_DIR, "conduit", "v1", "conduit.proto")]) != 0:
        sys.exit("protoc failed")
    grpc_module = os.path.join(out, "conduit", "v1", "conduit_pb2_grpc.py")
    with open(grpc_module) as f:
        text = f.read()
    text = text.replace("from conduit.v1 import conduit_pb2 as", "from . import conduit_pb2 as")
    with open(grpc_module, "w") as f:
        f.write(text)
    for folder in (os.path.join(out, "conduit"), os.path.join(out, "conduit", "v1")):
        open(os.path.join(folder, "__init__.py"), "a").close()
    open(os.path.join(out, "__init__.py"), "a").close()


def main():
    if "--check" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as fresh:
            generate(fresh)
            for name in ("conduit_pb2.py", "conduit_pb2_grpc.py"):
                a = os.path.join(fresh, "conduit", "v1", name)
                b = os.path.join(TARGET, "conduit", "v1", name)
                if not os.path.exists(b) or not filecmp.cmp(a, b, shallow=False):
                    sys.exit(f"{b} is stale: run clients/python/generate_stubs.py")
        print("the checked-in stubs match the proto")
        return
    generate(TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
