#!/usr/bin/env bash
# The main job, in about half a minute: builds what is needed, starts trainerd on a project-local state
# dir (embedded sled, no server to install), and runs the same real trainer-proc training twice side by
# side: once undisturbed, once SIGKILLed midway. trainerd restarts the killed one from its latest
# checkpoint (never step 0), and both end with the same weights digest, printed side by side. Then
# trainerd stops. Extra arguments go to both trainer-procs (scripts/demo.sh --epochs 3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
dir=$PWD/.trainerd-demo
rm -rf "$dir"
mkdir -p "$dir"
export TRAINERD_SOCKET=$dir/trainerd.sock
ctl=target/release/trainctl
target/release/trainerd --state-dir "$dir/state" --socket "$TRAINERD_SOCKET" --backoff-base 0.5 \
  >"$dir/trainerd.log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  $ctl info >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { cat "$dir/trainerd.log"; exit 1; }
  sleep 0.1
done
echo "trainerd is running (state in $dir/state, log in $dir/trainerd.log)"

# About 30 s on a 2-core machine with both runs sharing it: 6 epochs of 150 steps of a 3-layer MLP,
# a checkpoint every 50 steps and at each epoch's end.
train=(target/release/trainer-proc --device auto --epochs 6 --steps-per-epoch 150 --hidden 512,512,512
  --batch-size 128 --train-samples 8192 --checkpoint-every 50 "$@")
field() { $ctl --json get "$1" | python3 -c "import json,sys; v = json.load(sys.stdin).get('$2'); print('' if v is None else v)"; }
reference=$($ctl submit --name uninterrupted -- "${train[@]}")
demo=$($ctl submit --name interrupted -- "${train[@]}")
echo "submitted $reference (left alone) and $demo (to be killed midway)"

# Watch the interrupted run; halfway through, kill its trainer the hard way.
$ctl watch "$demo" &
watcher=$!
total=0
while :; do
  total=$(field "$demo" total_steps)
  step=$(field "$demo" step)
  [ -n "$total" ] && [ "$total" -gt 0 ] && [ "${step:-0}" -ge $((total / 2)) ] && break
  sleep 0.2
done
pid=$(field "$demo" pid)
echo
echo ">>> SIGKILL to trainer $pid of job $demo at step $step of $total"
kill -KILL "$pid"
wait "$watcher" || true
$ctl watch "$reference" >/dev/null || true

echo
echo "what trainerd recorded for $demo:"
$ctl events "$demo" | grep -E "backoff|starting: attempt|completed" | sed 's/^/  /'
echo
printf '%-14s %-10s %-9s %s\n' run state restarts weights_sha256
for id in "$reference" "$demo"; do
  printf '%-14s %-10s %-9s %s\n' "$(field "$id" name)" "$(field "$id" state)" "$(field "$id" restarts)" \
    "$(field "$id" weights_sha256)"
done
if [ "$(field "$reference" weights_sha256)" = "$(field "$demo" weights_sha256)" ]; then
  echo "same weights: the killed run resumed from $(field "$demo" resumed_from), not from step 0"
else
  echo "the weights differ: this is a bug; please report it with $dir"
  exit 1
fi
$ctl ls
