#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate against the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The shim (daemon/shim/) is compiled by daemon/build.rs, not as a cargo target: formatted and linted
# here with the same flags.
rustfmt --edition 2021 --check daemon/shim/main.rs
clippy-driver --edition 2021 --crate-type bin --crate-name trainerd_shim -C panic=abort \
  -C relocation-model=static -C target-feature=+crt-static -C link-arg=-nostartfiles -C link-arg=-nostdlib \
  --emit=metadata -o "$(mktemp -d)/trainerd-shim" -D warnings daemon/shim/main.rs
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The Python SDK's own tests (standard library only; the end-to-end SDK test runs in cargo test).
python3 -m unittest discover -s sdk/python/tests
# The benchmark suite at smoke size: proves it runs end to end (figures come from scripts/bench.sh).
target/debug/trainerd-bench --smoke
