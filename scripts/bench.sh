#!/usr/bin/env bash
# The benchmark suite at full size on a release build: prints a table of figures beside their targets
# (docs/benchmarks.md records a run). Extra arguments go to trainerd-bench (--smoke: a quick check;
# --strict: exit 1 when any target is missed; --peers: trainerd, pueue and supervisord side by side,
# the peers installed first into .peers/, which git ignores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins --locked
ulimit -n 65536 2>/dev/null || true
for arg in "$@"; do
  if [ "$arg" = --peers ]; then
    peers=$PWD/.peers
    if [ ! -x "$peers/bin/pueued" ]; then
      echo "bench: installing pueue 4.0.4 into $peers (cargo install, a few minutes; once)" >&2
      cargo install pueue --version 4.0.4 --locked --root "$peers" >&2
    fi
    if [ ! -x "$peers/venv/bin/supervisord" ]; then
      echo "bench: installing supervisor 4.3.0 into $peers/venv (once)" >&2
      python3 -m venv "$peers/venv"
      "$peers/venv/bin/pip" install --quiet supervisor==4.3.0 >&2
    fi
    export TRAINERD_PEERS=$peers
  fi
done
exec target/release/trainerd-bench "$@"
