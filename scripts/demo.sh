#!/usr/bin/env bash
# The main job: builds what is needed, then trains trainer-proc on the default task and shows its
# progress until it completes. Output lands in .trainerd-demo/ (removed and recreated each run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin trainer-proc
rm -rf .trainerd-demo
exec target/release/trainer-proc --out .trainerd-demo "$@"
