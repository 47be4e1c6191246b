"""The progress file (protocol v1, section 2): replaced atomically, rewritten by a heartbeat thread."""

import json
import os
import threading
import time

PROTOCOL_VERSION = 1
MAX_PROGRESS_BYTES = 64 * 1024
FINAL_STATES = ("paused", "stopped", "completed", "failed")


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
        """Sets fields for the next write (no I/O)."""
        with self._lock:
            self._fields.update(fields)

    def write(self, fsync=False, **fields):
        """Writes the file now: temp file in the same directory, then rename over the old one."""
        with self._lock:
            self._fields.update(fields)
            self._fields["heartbeat_seq"] += 1
            self._fields["updated_at"] = time.time()
            data = json.dumps(_finite(self._fields), separators=(",", ":"), allow_nan=False).encode()
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
