"""Builds the client's gRPC stubs from proto/trainerd.proto at build time (grpcio-tools), so the
Python client is never a hand-written copy of the API and always matches the proto it was built
with. The trainer side of the package needs none of this."""

import os
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# In the repository the proto is two levels up; an sdist carries its own copy (MANIFEST.in).
PROTO_CANDIDATES = [
    os.path.join(HERE, "..", "..", "proto", "trainerd.proto"),
    os.path.join(HERE, "proto", "trainerd.proto"),
]


def find_proto():
    for path in PROTO_CANDIDATES:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise SystemExit("trainerd.proto not found (looked in: %s); build from the trainerd repository" % PROTO_CANDIDATES)


class BuildWithStubs(build_py):
    """build_py, then trainerd/_grpc/trainerd_pb2{,_grpc}.py generated into the build."""

    def run(self):
        super().run()
        from grpc_tools import protoc

        proto = find_proto()
        out = os.path.join(self.build_lib, "trainerd", "_grpc")
        os.makedirs(out, exist_ok=True)
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        with tempfile.TemporaryDirectory() as work:
            shutil.copy(proto, os.path.join(work, "trainerd.proto"))
            code = protoc.main(["grpc_tools.protoc", "-I" + work, "-I" + include, "--python_out=" + out,
                                "--grpc_python_out=" + out, os.path.join(work, "trainerd.proto")])
        if code != 0:
            raise SystemExit("protoc failed on %s (exit %d)" % (proto, code))
        # The generated service module imports its messages as a top-level module; make it relative.
        grpc_module = os.path.join(out, "trainerd_pb2_grpc.py")
        with open(grpc_module) as f:
            text = f.read()
        with open(grpc_module, "w") as f:
            f.write(text.replace("import trainerd_pb2 as trainerd__pb2", "from . import trainerd_pb2 as trainerd__pb2"))
        shutil.copy(proto, os.path.join(out, "trainerd.proto"))


setup(cmdclass={"build_py": BuildWithStubs})
