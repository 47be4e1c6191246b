"""The SDK against the protocol, in real subprocesses (pure Python: checkpoints are pickles here).

Run: python3 -m unittest discover -s sdk/python/tests
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# A loop of EPOCHS epochs of 5 steps that checkpoints its step and epoch, with a ready marker after
# its first step so a test knows when its signal handlers are in place.
LOOP = """
import os, sys, time
sys.path.insert(0, {src!r})
import trainerd
run = trainerd.Run(total_epochs=4, out={out!r})
state = run.resume()
start = state["epoch"] if state else 0
ran = 0
for epoch in range(start, 4):
    for _ in range(5):
        time.sleep({sleep})
        run.step(loss=1.0 / (run.step_count + 1))
        ran += 1
        open({ready!r}, "w").close()
    run.end_epoch(epoch + 1, {{"epoch": epoch + 1, "step": run.step_count, "w": run.step_count * 2}})
print("ran", ran, "from", run.step_count - ran, flush=True)
run.complete(weights_sha256="w%d" % run.step_count)
"""


class SdkTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.dir.name, "run")
        self.ready = os.path.join(self.dir.name, "ready")

    def tearDown(self):
        self.dir.cleanup()

    def start(self, sleep=0.0, env=None):
        code = LOOP.format(src=SRC, out=self.out, sleep=sleep, ready=self.ready)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINERD_")}
        full_env.update(env or {})
        return subprocess.Popen(
            [sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_ready(self, proc):
        deadline = time.time() + 30
        while not os.path.exists(self.ready):
            self.assertIsNone(proc.poll(), "the loop exited before its first step")
            self.assertLess(time.time(), deadline)
            time.sleep(0.01)

    def progress(self):
        with open(os.path.join(self.out, "progress.json")) as f:
            return json.load(f)

    def test_standalone_run_completes_with_checkpoints_and_a_final_progress_file(self):
        proc = self.start()
        self.assertEqual(proc.wait(), 0, proc.stderr.read())
        p = self.progress()
        self.assertEqual((p["protocol"], p["state"], p["step"], p["weights_sha256"]), (1, "completed", 20, "w20"))
        self.assertEqual(p["latest_checkpoint"]["epoch"], 4)
        self.assertTrue(os.path.isabs(p["latest_checkpoint"]["path"]))
        names = sorted(os.listdir(os.path.join(self.out, "checkpoints")))
        self.assertEqual(names, ["step-000000000010", "step-000000000015", "step-000000000020"], "the last 3 kept")

    def test_sigusr1_pauses_at_the_epoch_end_and_a_resume_continues_from_there(self):
        proc = self.start(sleep=0.05)
        self.wait_ready(proc)
        proc.send_signal(signal.SIGUSR1)
        self.assertEqual(proc.wait(), 0)
        p = self.progress()
        self.assertEqual((p["state"], p["step"] % 5), ("paused", 0))
        resumed = self.start(env={"TRAINERD_RESUME_FROM": p["latest_checkpoint"]["path"], "TRAINERD_ATTEMPT": "2"})
        self.assertEqual(resumed.wait(), 0)
        self.assertEqual((self.progress()["state"], self.progress()["weights_sha256"]), ("completed", "w20"))
        # Equal results cannot tell a resume from a rerun from step 0: the attempt must have taken
        # only the steps after the pause checkpoint.
        self.assertEqual(resumed.stdout.read().strip(), "ran %d from %d" % (20 - p["step"], p["step"]))

    def test_sigterm_stops_at_the_next_step_with_exit_75(self):
        proc = self.start(sleep=0.05)
        self.wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(), 75)
        self.assertEqual(self.progress()["state"], "stopped")

    def test_an_unreadable_resume_checkpoint_fails_with_exit_65_never_from_step_0(self):
        proc = self.start(env={"TRAINERD_RESUME_FROM": os.path.join(self.dir.name, "missing")})
        self.assertEqual(proc.wait(), 65)
        p = self.progress()
        self.assertEqual((p["state"], p["step"]), ("failed", 0))
        self.assertIn("cannot resume", p["message"])

    def test_under_trainerd_the_environment_names_the_files_and_heartbeats_keep_coming(self):
        progress = os.path.join(self.dir.name, "p.json")
        ckpts = os.path.join(self.dir.name, "c")
        os.makedirs(ckpts)
        env = {"TRAINERD_PROGRESS_FILE": progress, "TRAINERD_CHECKPOINT_DIR": ckpts, "TRAINERD_HEARTBEAT_INTERVAL": "0.05"}
        proc = self.start(sleep=0.1, env=env)
        self.wait_ready(proc)
        seqs = set()
        deadline = time.time() + 10
        while len(seqs) < 5 and time.time() < deadline:
            with open(progress) as f:
                seqs.add(json.load(f)["heartbeat_seq"])
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        self.assertGreaterEqual(len(seqs), 5, "the heartbeat thread rewrites the file")
        self.assertFalse(os.path.exists(os.path.join(self.out, "progress.json")), "nothing written standalone")

    def test_a_reader_never_sees_a_torn_progress_file(self):
        sys.path.insert(0, SRC)
        from trainerd.progress import Reporter

        path = os.path.join(self.dir.name, "progress.json")
        reporter = Reporter(path, heartbeat_interval=0.001).start()
        stop = threading.Event()

        def churn():
            i = 0
            while not stop.is_set():
                reporter.write(step=i, message="x" * (i % 5000))
                i += 1

        writer = threading.Thread(target=churn)
        writer.start()
        reads = 0
        try:
            deadline = time.time() + 1.0
            while time.time() < deadline:
                with open(path) as f:
                    json.load(f)
                reads += 1
        finally:
            stop.set()
            writer.join()
            reporter.finish("completed")
        self.assertGreater(reads, 100)


if __name__ == "__main__":
    unittest.main()
