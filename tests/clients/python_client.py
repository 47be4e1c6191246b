"""trainerd.Client (the SDK's Python client, built and installed from sdk/python) against a real
trainerd, run by tests/e2e/clients.rs with TRAINERD_SOCKET set:

    python python_client.py FAKE_TRAINER_PATH
"""

import sys

import trainerd

assert "grpc" not in sys.modules, "importing trainerd must not load grpcio (the trainer side is stdlib only)"
FAKE = sys.argv[1]
from trainerd.client import pb, state_word  # noqa: E402

client = trainerd.Client()
assert "grpc" in sys.modules
info = client.info()
assert info.api_version.startswith("1.") and info.pid > 0, info

# Every SubmitJob field by its proto name; the idempotency key returns the same job the second time.
fields = dict(
    name="py-fake",
    env={"FAKE_STEPS": "30", "FAKE_STEP_MS": "20", "FAKE_PRINT_BYTES": "8"},
    gpus=0,
    priority=3,
    idempotency_key="py-client-1",
    max_restarts=2,
    on_failure="restart",
    heartbeat_timeout_ms=60_000,
    startup_grace_ms=60_000,
    stop_grace_ms=10_000,
    restart_window_ms=600_000,
    backoff_base_ms=100,
    backoff_max_ms=1_000,
    pause_timeout_ms=60_000,
    protocol="v1",
    idle_timeout_ms=600_000,
)
job = client.submit([FAKE], **fields)
again = client.submit([FAKE], **fields)
assert again.id == job.id, (job.id, again.id)
kinds = [u.kind for u in client.watch(job.id)]
assert kinds[0] == "snapshot" and "progress" in kinds, kinds
done = client.get(job.id)
assert state_word(done.state) == "completed" and done.step == 30, done
assert done.id in [j.id for j in client.list(states=["completed"])]
assert client.list(states=["running"], name="py-fake") == []
stdout = b"".join(data for stream, data in client.logs(job.id) if stream == "stdout")
assert len(stdout) >= 30 * 8, stdout[:200]
assert any(e.kind == "transition" for e in client.events(job.id))

# logs(follow=True) ends when the job does.
printer = client.submit(["/bin/sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done"], protocol="none")
followed = b"".join(data for _, data in client.logs(printer.id, follow=True))
assert followed == b"line 1\nline 2\nline 3\n", followed

# Pause and resume a protocol trainer, then cancel it.
slow = client.submit([FAKE], name="py-pause", env={"FAKE_STEPS": "100000", "FAKE_STEP_MS": "20"}, protocol="v1")
for update in client.watch(slow.id):
    if update.job.step >= 6:
        break
client.pause(slow.id)
for update in client.watch(slow.id):
    if state_word(update.job.state) == "paused":
        break
assert state_word(client.get(slow.id).state) == "paused"
client.resume(slow.id)
for update in client.watch(slow.id):
    if state_word(update.job.state) == "running":
        break
cancelled = client.cancel(slow.id)
assert state_word(client.wait(slow.id).state) == "cancelled", cancelled

# Errors are typed and carry the code and trainerd's message.
try:
    client.get("fffffffffff0")
    raise AssertionError("found a job that does not exist")
except trainerd.NotFound as e:
    assert e.code.name == "NOT_FOUND" and "fffffffffff0" in e.message, e
try:
    client.submit([FAKE], name="has spaces")
    raise AssertionError("a bad name was accepted")
except trainerd.InvalidArgument as e:
    assert "name" in e.message, e
try:
    client.resume(job.id)
    raise AssertionError("a completed job was resumed")
except trainerd.FailedPrecondition as e:
    assert isinstance(e, trainerd.TrainerdError)
try:
    client.submit([FAKE], bogus=1)
    raise AssertionError("an unknown field was accepted")
except TypeError as e:
    assert "bogus" in str(e)
# Retry, removal, disk use.
try:
    client.retry(job.id)
    raise AssertionError("a completed job was retried")
except trainerd.FailedPrecondition as e:
    assert "never runs again" in e.message, e
# The fake trainer reports no metrics: an empty history, asked for by name too.
assert client.metrics(job.id) == {} and client.metrics(job.id, names=["loss"], max_points=5) == {}
assert list(client.metrics_response(job.id).names) == []
usage = client.disk_usage()
assert usage.total_bytes > 0 and any(j.id == job.id for j in usage.jobs), usage
removed = client.remove(job.id)
assert [r.id for r in removed] == [job.id] and removed[0].bytes_freed > 0, removed
try:
    client.get(job.id)
    raise AssertionError("a removed job is still there")
except trainerd.NotFound:
    pass
health = client.health()
assert health.status == "ok", health
missing = trainerd.Client("/nonexistent/trainerd.sock", timeout=2)
try:
    missing.info()
    raise AssertionError("a missing socket answered")
except trainerd.Unavailable as e:
    assert e.code.name == "UNAVAILABLE"
print("python client: all calls as expected")
