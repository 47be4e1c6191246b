#!/usr/bin/env bash
# Installs what building and testing trainerd needs and is missing, and reuses what an earlier run
# installed: torch==2.11.0 (the libtorch that tch 0.24 requires exactly) into the project-local venv
# .venv, the link .venv/libtorch that .cargo/config.toml points LIBTORCH at, and the Hugging Face
# libraries the unchanged-script test trains with (transformers, accelerate; pinned), and grpcio with
# its tools, health and reflection packages (the client tests; pinned). protoc needs
# nothing: the build takes it from the protoc-bin-vendored crate.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PYTHON=${PYTHON:-python3}

have_torch() {
  .venv/bin/python - <<PY 2>/dev/null
import importlib.metadata, sys
sys.exit(0 if importlib.metadata.version("torch").split("+")[0] == "$TORCH_VERSION" else 1)
PY
}

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the venv .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
if ! have_torch; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (about a minute, 4.6 GB; once)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
HF_PACKAGES=("transformers==4.57.6" "accelerate==1.16.0")
if ! .venv/bin/python -c 'import transformers, accelerate' 2>/dev/null; then
  echo "setup: installing ${HF_PACKAGES[*]} into .venv (for the unchanged-script test; once)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${HF_PACKAGES[@]}"
fi
# The standard gRPC clients the client tests use (tests/e2e/clients.rs), and grpcio-tools, which builds
# the SDK's stubs. setuptools stays below 82: torch 2.11 requires it.
GRPC_PACKAGES=("grpcio==1.85.3" "grpcio-tools==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" "setuptools<82")
if ! .venv/bin/python -c 'import grpc, grpc_tools, grpc_health.v1, grpc_reflection' 2>/dev/null; then
  echo "setup: installing ${GRPC_PACKAGES[*]} into .venv (for the gRPC client tests; once)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${GRPC_PACKAGES[@]}"
fi
# A real one-node Slurm cluster for the Slurm executor's tests (tests/slurm, scripts/slurm-cluster.sh):
# Debian's Slurm 22.05 and munge.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing slurmctld slurmd slurm-client munge (for the Slurm tests; once)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  else
    echo "setup: Slurm is missing and cannot be installed here (needs root and apt-get): the Slurm tests skip" >&2
  fi
fi
# Headless Chromium and its WebDriver for the web page's browser test (tests/e2e/browser.rs).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium chromium-driver (for the web page's browser test; once)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium is missing and cannot be installed here (needs root and apt-get): the browser test skips" >&2
  fi
fi
# Go and grpc-go from Debian's packages, for the Go client test (tests/e2e/clients.rs).
if ! command -v go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null || [ ! -d /usr/share/gocode/src/google.golang.org/grpc ] \
  || ! dpkg -s golang-github-golang-protobuf-1-5-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc (for the Go client test; once)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-google-grpc-dev golang-google-protobuf-dev \
      golang-github-golang-protobuf-1-5-dev \
      protoc-gen-go protoc-gen-go-grpc >/dev/null
  else
    echo "setup: Go is missing and cannot be installed here (needs root and apt-get): the Go client test skips" >&2
  fi
fi
torch_dir=$(.venv/bin/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')
ln -sfn "$torch_dir" .venv/libtorch
