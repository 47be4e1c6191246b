#!/usr/bin/env bash
# The main job: builds what is needed, starts trainerd on a project-local state dir (embedded sled, no
# server to install), submits a real trainer-proc training job and follows its progress until it
# completes; then stops trainerd. Extra arguments go to trainer-proc (scripts/demo.sh --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
dir=$PWD/.trainerd-demo
mkdir -p "$dir"
export TRAINERD_SOCKET=$dir/trainerd.sock
target/release/trainerd --state-dir "$dir/state" --socket "$TRAINERD_SOCKET" >"$dir/trainerd.log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  target/release/trainctl info >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { cat "$dir/trainerd.log"; exit 1; }
  sleep 0.1
done
echo "trainerd is running (state in $dir/state, log in $dir/trainerd.log)"
target/release/trainctl submit --name demo --watch -- target/release/trainer-proc --device auto "$@"
target/release/trainctl ls
