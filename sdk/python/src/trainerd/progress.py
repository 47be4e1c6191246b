"""The progress file (protocol v1, section 2): replaced atomically, rewritten by a heartbeat thread."""

import json
import os
import threading
import time

PROTOCOL_VERSION = 1
MAX_PROGRESS_BYTES = 64 * 1024
FINAL_STATES = ("paused", "stopped", "completed", "failed")


# The progress file's own fields (protocol section 2); any other number a loop reports is a metric.
PROTOCOL_FIELDS = frozenset((
    "protocol", "state", "step", "total_steps", "epoch", "total_epochs", "loss", "val_loss", "lr",
    "samples_per_sec", "heartbeat_seq", "heartbeat_interval", "updated_at", "latest_checkpoint", "message",
    "weights_sha256", "phase_timeout_s", "metrics",
))


def _split(fields):
    """The protocol's fields, and the other numbers (accuracy=..., grad_norm=...) as metrics."""
    own, metrics = {}, {}
    for key, value in fields.items():
        if key in PROTOCOL_FIELDS:
            own[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
        else:
            raise TypeError(f"{key}={value!r}: a metric must be a number (the progress file's own fields are "
                            f"{', '.join(sorted(PROTOCOL_FIELDS))})")
    return own, metrics


def _finite(fields):
    """The fields with non-finite floats as the protocol's strings ("NaN", "Infinity", "-Infinity"):
    JSON has no NaN, and a diverged loss must still reach trainerd."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, float) and value != value:
            value = "NaN"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            value = "Infinity" if value > 0 else "-Infinity"
        out[key] = value
    return out


class Reporter:
    """Owns the progress file. The training loop only edits fields in memory (``update``); writes
    happen on the heartbeat thread, at most once per interval, so reporting never slows the loop.
    Final states are written at once, with an fsync, because the process exits right after."""

    def __init__(self, path, heartbeat_interval=5.0):
        self.path = os.fspath(path)
        self.interval = float(heartbeat_interval)
        self._lock = threading.Lock()
        self._fields = {
            "protocol": PROTOCOL_VERSION,
            "state": "starting",
            "step": 0,
            "heartbeat_seq": 0,
            "updated_at": time.time(),
            "heartbeat_interval": self.interval,
            "latest_checkpoint": None,
        }
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        """Writes the first heartbeat and starts the heartbeat thread."""
        self.write()
        self._thread = threading.Thread(target=self._beat, name="trainerd-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.interval):
            self.write()

    def update(self, **fields):
        """Sets fields for the next write (no I/O). Numbers that are not the protocol's own fields
        (``accuracy``, ``grad_norm``, ...) are metrics: kept in the job's metric history."""
        own, metrics = _split(fields)
        with self._lock:
            self._fields.update(own)
            if metrics:
                self._fields.setdefault("metrics", {}).update(metrics)

    def write(self, fsync=False, **fields):
        """Writes the file now: temp file in the same directory, then rename over the old one."""
        own, metrics = _split(fields)
        with self._lock:
            self._fields.update(own)
            if metrics:
                self._fields.setdefault("metrics", {}).update(metrics)
            self._fields["heartbeat_seq"] += 1
            self._fields["updated_at"] = time.time()
            out = _finite(self._fields)
            if "metrics" in out:
                out["metrics"] = _finite(out["metrics"])
            data = json.dumps(out, separators=(",", ":"), allow_nan=False).encode()
            if len(data) > MAX_PROGRESS_BYTES:
                raise ValueError(f"progress file would be {len(data)} bytes; the protocol allows {MAX_PROGRESS_BYTES}")
            tmp = f"{self.path}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def finish(self, state, **fields):
        """Writes a final state (durably) and stops the heartbeat thread."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state; use one of {FINAL_STATES}")
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.write(fsync=True, state=state, **fields)
