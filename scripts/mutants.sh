#!/usr/bin/env bash
# Mutation testing of the core: cargo-mutants over the files whose decisions matter most (the state
# machine, the restart policy, the stall clock, resume choice, reconciliation's divergence, access
# checks, the store and its formats, trainer-path safety, output parsing), against the unit tests of
# each file's crate; then mutmut-style mutation of the Python SDK's resume and protocol code
# (scripts/sdk_mutants.py), against its unittests. docs/testing.md records the outcome.
#
#   scripts/mutants.sh               # everything (about 40 minutes on 2 cores)
#   scripts/mutants.sh --in-diff     # only mutants in lines changed since origin/main (or HEAD~1)
#   scripts/mutants.sh --sdk-only    # only the SDK
#
# Not part of scripts/test.sh: too slow to run per change on two cores. Install: cargo install
# cargo-mutants (done here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
CORE=(
  proto/src/state.rs
  daemon/src/policy.rs
  daemon/src/job/stall.rs
  daemon/src/job/checkpoints.rs
  daemon/src/job/resume.rs
  daemon/src/job/output.rs
  daemon/src/divergence.rs
  daemon/src/access.rs
  daemon/src/store/mod.rs
  daemon/src/store/codec.rs
  daemon/src/untrusted.rs
)
mode=${1:-all}
if [ "$mode" != "--sdk-only" ]; then
  if ! command -v cargo-mutants >/dev/null; then
    cargo install --locked cargo-mutants
  fi
  args=()
  for f in "${CORE[@]}"; do args+=(--file "$f"); done
  if [ "$mode" = "--in-diff" ]; then
    base=$(git rev-parse --verify -q origin/main || git rev-parse HEAD~1)
    git diff "$base" -- "${CORE[@]}" > target/mutants.diff
    args+=(--in-diff target/mutants.diff)
  fi
  cargo mutants --no-shuffle -j 1 "${args[@]}" -o target/mutants || status=$?
  echo "cargo-mutants: $(cat target/mutants/mutants.out/caught.txt 2>/dev/null | wc -l) caught," \
    "$(cat target/mutants/mutants.out/missed.txt 2>/dev/null | wc -l) missed," \
    "$(cat target/mutants/mutants.out/unviable.txt 2>/dev/null | wc -l) unviable"
  if [ -s target/mutants/mutants.out/missed.txt ]; then
    echo "missed (each must be killed by a test or explained in docs/testing.md):"
    cat target/mutants/mutants.out/missed.txt
  fi
fi
python3 scripts/sdk_mutants.py
exit "${status:-0}"
