#!/usr/bin/env bash
# The benchmark suite at full size on a release build: prints a table of figures beside their targets
# (docs/benchmarks.md records a run). Extra arguments go to trainerd-bench (--smoke: a quick check;
# --strict: exit 1 when any target is missed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins --locked
ulimit -n 65536 2>/dev/null || true
exec target/release/trainerd-bench "$@"
