#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate against the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The Python SDK's own tests (standard library only; the end-to-end SDK test runs in cargo test).
python3 -m unittest discover -s sdk/python/tests
# The benchmark suite at smoke size: proves it runs end to end (figures come from scripts/bench.sh).
target/debug/trainerd-bench --smoke
