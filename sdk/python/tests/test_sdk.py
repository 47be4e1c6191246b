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
import fractions, os, sys, time
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
    run.end_epoch(epoch + 1, {{"epoch": epoch + 1, "step": run.step_count, "w": fractions.Fraction(run.step_count, 3)}})
print("ran", ran, "from", run.step_count - ran, flush=True)
run.complete(weights_sha256="w%d" % run.step_count)
"""


class SdkApiTest(unittest.TestCase):
    """The SDK's parts in this process: defaults, edges and exact values the loop tests do not reach."""

    def setUp(self):
        sys.path.insert(0, SRC)
        import trainerd  # noqa: F401 - the module under test, from the source tree

        self.trainerd = sys.modules["trainerd"]
        self.dir = tempfile.TemporaryDirectory()
        self.saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("TRAINERD_")}

    def tearDown(self):
        os.environ.update(self.saved)
        self.dir.cleanup()

    def read(self, path):
        with open(path) as f:
            return json.load(f)

    def run_obj(self, **kw):
        run = self.trainerd.Run(out=os.path.join(self.dir.name, "run"), install_signals=False, **kw)
        if hasattr(run.reporter, "_stop"):
            self.addCleanup(run.reporter._stop.set)
        return run

    def test_only_rank_0_reports_and_checkpoints_and_every_rank_names_the_same_checkpoint(self):
        for name, value in [("RANK", "1"), ("WORLD_SIZE", "2")]:
            os.environ[name] = value
            self.addCleanup(os.environ.pop, name, None)
        worker = self.run_obj(total_epochs=2)
        self.assertEqual((worker.rank, worker.world_size, worker.is_main), (1, 2, False))
        worker.step(loss=1.0)
        worker.end_epoch(1, {"w": 1})
        path = worker.checkpoint({"w": 1})
        out = os.path.join(self.dir.name, "run")
        self.assertFalse(os.path.exists(os.path.join(out, "progress.json")), "rank 1 wrote a progress file")
        self.assertEqual(os.listdir(os.path.join(out, "checkpoints")), [], "rank 1 wrote a checkpoint")
        self.assertEqual(path, os.path.join(out, "checkpoints", "step-000000000001"))
        os.environ["RANK"] = "0"
        main = self.run_obj(total_epochs=2)
        main.step(loss=1.0)
        self.assertEqual(main.checkpoint({"w": 1}), path, "rank 0 writes where the others say it is")
        self.assertEqual(self.read(os.path.join(out, "progress.json"))["latest_checkpoint"]["path"], path)

    def test_rollbacks_come_from_the_environment_and_a_nan_loss_is_written_as_the_protocol_says(self):
        os.environ["TRAINERD_ROLLBACK"] = "2"
        self.addCleanup(os.environ.pop, "TRAINERD_ROLLBACK", None)
        run = self.run_obj()
        self.assertEqual(run.rollbacks, 2)
        run.step(loss=float("nan"))
        run.reporter.write()
        with open(os.path.join(self.dir.name, "run", "progress.json")) as f:
            text = f.read()
        self.assertIn('"loss":"NaN"', text)
        json.loads(text, parse_constant=lambda c: self.fail("bare %s is not JSON" % c))

    def test_numbers_beyond_the_protocol_fields_are_metrics_and_anything_else_is_refused(self):
        run = self.run_obj()
        run.step(loss=0.5, lr=1e-3, accuracy=0.9, grad_norm=float("inf"))
        run.report(state="evaluating", val_loss=0.6, val_accuracy=1)
        run.reporter.write()
        with open(os.path.join(self.dir.name, "run", "progress.json")) as f:
            progress = json.loads(f.read())
        self.assertEqual((progress["loss"], progress["lr"], progress["val_loss"]), (0.5, 1e-3, 0.6))
        self.assertEqual(progress["metrics"], {"accuracy": 0.9, "grad_norm": "Infinity", "val_accuracy": 1.0})
        self.assertNotIn("accuracy", progress)
        with self.assertRaises(TypeError):
            run.step(note="not a number")

    def test_slurm_and_mpi_ranks_are_read_too_and_without_torch_distributed_a_rank_agrees_with_itself(self):
        for name, value in [("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4")]:
            os.environ[name] = value
            self.addCleanup(os.environ.pop, name, None)
        run = self.run_obj()
        self.assertEqual((run.rank, run.world_size), (3, 4))
        self.assertEqual(run.agree(), (False, False))
        run.control.pause.set()
        self.assertEqual(run.agree(), (True, False))

    def test_a_fresh_run_starts_at_zero_and_reports_zero_totals_when_not_told(self):
        run = self.run_obj()
        p = self.read(run.progress_file)
        self.assertEqual((p["step"], p["total_steps"], p["total_epochs"], p["state"]), (0, 0, 0, "starting"))
        self.assertEqual((run.step_count, run.epoch, run.attempt), (0, 0, 1))
        path = run.checkpoint({"w": 1})
        self.assertTrue(os.path.isdir(path) and path.endswith("step-000000000000"), path)
        p = self.read(run.progress_file)
        self.assertEqual(p["latest_checkpoint"], {"path": path, "step": 0, "epoch": 0})

    def test_heartbeat_sequence_numbers_grow_by_one_per_write(self):
        run = self.run_obj()
        first = self.read(run.progress_file)["heartbeat_seq"]
        run.reporter.write()
        self.assertEqual(self.read(run.progress_file)["heartbeat_seq"], first + 1)

    def test_a_state_without_step_or_epoch_resumes_at_zero_never_guessing(self):
        from trainerd import checkpoint

        for state in [{"w": 1}, [1, 2]]:
            path = checkpoint.save(state, os.path.join(self.dir.name, "ck"), 7)
            os.environ["TRAINERD_RESUME_FROM"] = path
            run = self.run_obj()
            self.assertEqual(run.resume(), state)
            self.assertEqual((run.step_count, run.epoch), (0, 0))
            del os.environ["TRAINERD_RESUME_FROM"]

    def test_pruning_keeps_exactly_the_newest_and_the_protected(self):
        from trainerd import checkpoint

        d = os.path.join(self.dir.name, "ck")
        paths = [checkpoint.save({"s": s}, d, s) for s in range(5)]
        checkpoint.save({"s": 2}, d, 2)  # the same step again keeps one copy
        checkpoint.prune(d, 1, protect=[paths[0]])
        self.assertEqual(sorted(os.listdir(d)), ["step-000000000000", "step-000000000004"])
        checkpoint.prune(d, 0)
        self.assertEqual(len(os.listdir(d)), 2, "keep 0 prunes nothing")

    def test_a_progress_file_is_refused_one_byte_over_64_kib(self):
        from trainerd.progress import MAX_PROGRESS_BYTES, Reporter

        self.assertEqual(MAX_PROGRESS_BYTES, 65536)
        reporter = Reporter(os.path.join(self.dir.name, "p.json"))
        # The time's digits vary by a byte or two from write to write: aim until exactly 64 KiB.
        n = 0
        for _ in range(40):
            try:
                reporter.write(message="x" * n)
            except ValueError:
                n -= 1
                continue
            size = os.path.getsize(reporter.path)
            if size == MAX_PROGRESS_BYTES:
                break
            n += MAX_PROGRESS_BYTES - size
        self.assertEqual(size, MAX_PROGRESS_BYTES, "exactly 64 KiB is allowed")
        with self.assertRaises(ValueError):
            reporter.write(message="x" * (n + 5))

    def test_a_reporter_never_started_can_still_finish(self):
        from trainerd.progress import Reporter

        reporter = Reporter(os.path.join(self.dir.name, "p.json"))
        reporter.finish("completed")
        self.assertEqual(self.read(reporter.path)["state"], "completed")
        with self.assertRaises(ValueError):
            reporter.finish("running")

    def test_the_final_state_is_the_files_last_word_even_with_a_fast_heartbeat(self):
        from trainerd.progress import Reporter

        for i in range(50):
            reporter = Reporter(os.path.join(self.dir.name, f"p{i}.json"), heartbeat_interval=0.0001).start()
            reporter.finish("completed")
            time.sleep(0.002)
            self.assertEqual(self.read(reporter.path)["state"], "completed", f"round {i}")


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
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.stderr.close)
        return proc

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

    def test_fail_exits_78_by_default_and_a_crash_never_hangs_on_the_heartbeat_thread(self):
        code = (
            f"import sys\nsys.path.insert(0, {SRC!r})\nimport trainerd\n"
            f"run = trainerd.Run(out={self.out!r})\nrun.fail('bad configuration')"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 78, proc.stderr)
        self.assertEqual(self.progress()["state"], "failed")
        # A loop that dies of an exception exits: the heartbeat thread never keeps the process alive.
        code = f"import sys\nsys.path.insert(0, {SRC!r})\nimport trainerd\nrun = trainerd.Run(out={self.out!r})\nraise RuntimeError('boom')"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 1, proc.stderr)

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
