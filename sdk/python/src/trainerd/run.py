"""``Run``: one attempt of a training run under trainerd, or standalone."""

import os
import sys

from . import checkpoint
from .control import Control
from .progress import Reporter

RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
WORLD_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _first_int(env, names, default):
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                pass
    return default


class _Silent:
    """The reporter of a rank other than 0: it writes nothing (rank 0 speaks for the job)."""

    def update(self, **fields):
        pass

    def write(self, **fields):
        pass

    def finish(self, state, **fields):
        pass

    def start(self):
        return self


def _distributed():
    """torch.distributed when it is initialized with more than one rank, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist


def _leave_together(code):
    """Exits with ``code`` after every rank got here. The process group is taken down first: left to
    the interpreter's exit, gloo's threads can be destroyed while a peer's socket closes under them,
    and one rank dies with SIGABRT ("terminate called without an active exception"), which makes
    the launcher fail the whole attempt instead of pausing it."""
    dist = _distributed()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    sys.exit(code)


OK = 0
"""Completed, or paused when the progress file says so."""
RETRY = 75
"""Restart me from my latest checkpoint (also the answer to SIGTERM)."""
DATA_ERR = 65
"""The data or the resume checkpoint cannot be read."""
CONFIG = 78
"""A permanent configuration error: not restarted."""


class Run:
    """The trainer protocol for one attempt.

    Under trainerd the paths come from ``TRAINERD_*`` variables; standalone (no
    ``TRAINERD_PROGRESS_FILE``) everything goes to ``out`` (``progress.json`` and ``checkpoints/``),
    and a resume is asked for by setting ``TRAINERD_RESUME_FROM`` by hand.

    >>> run = trainerd.Run(total_epochs=10)
    >>> state = run.resume()            # None on a fresh start
    >>> ...; run.step(loss=loss.item())
    >>> run.end_epoch(epoch, {"model": model.state_dict(), ...})   # checkpoint; pauses if asked
    >>> run.complete(weights_sha256=trainerd.weights_sha256(model))

    In a multi-process job (torchrun, ``srun``, ``accelerate launch``: ``RANK``/``WORLD_SIZE`` or
    their Slurm and MPI forms) only rank 0 writes the progress file and checkpoints; every rank
    resumes from the same checkpoint; and ``end_epoch`` is the collective point where all ranks agree
    (one all-reduce of the pause and stop flags when torch.distributed is initialized) so that no rank
    leaves while another waits in a collective. The five lines stay the same.
    """

    def __init__(self, total_epochs=0, total_steps=0, out="trainerd-run", keep=3, install_signals=True):
        env = os.environ
        standalone = "TRAINERD_PROGRESS_FILE" not in env
        if standalone:
            os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        self.progress_file = env.get("TRAINERD_PROGRESS_FILE") or os.path.join(out, "progress.json")
        self.checkpoint_dir = env.get("TRAINERD_CHECKPOINT_DIR") or os.path.join(out, "checkpoints")
        self.resume_from = env.get("TRAINERD_RESUME_FROM") or None
        self.attempt = int(env.get("TRAINERD_ATTEMPT", "1"))
        # How many times trainerd rolled this job back after a diverged loss: a script may change its
        # data order or learning rate when it is above 0.
        self.rollbacks = int(env.get("TRAINERD_ROLLBACK", "0") or 0)
        self.standalone = standalone
        self.rank = _first_int(env, RANK_VARS, 0)
        self.world_size = max(1, _first_int(env, WORLD_VARS, 1))
        self.local_rank = _first_int(env, ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
        self.keep = keep
        self.step_count = 0
        self.epoch = 0
        self.control = Control()
        if install_signals:
            self.control.install()
        interval = float(env.get("TRAINERD_HEARTBEAT_INTERVAL", "5"))
        self.reporter = Reporter(self.progress_file, interval) if self.is_main else _Silent()
        self.reporter.update(total_epochs=int(total_epochs), total_steps=int(total_steps))
        self.reporter.start()

    @property
    def is_main(self):
        """Rank 0: the process that reports and checkpoints for the job."""
        return self.rank == 0

    @property
    def pause_requested(self):
        """SIGUSR1 arrived: stop at the end of this epoch (``end_epoch`` does it)."""
        return self.control.pause.is_set()

    @property
    def stop_requested(self):
        """SIGTERM arrived: stop at the next step (``step`` does it)."""
        return self.control.stop.is_set()

    def resume(self):
        """The state saved in ``TRAINERD_RESUME_FROM``, or None on a fresh start. A checkpoint that
        cannot be read ends the attempt with exit 65: never a silent restart from step 0."""
        if not self.resume_from:
            return None
        try:
            state = checkpoint.load(self.resume_from)
        except Exception as e:  # noqa: BLE001 - any failure to load is the same protocol answer
            self.fail(f"cannot resume from {self.resume_from}: {e}", code=DATA_ERR)
        self.step_count = int(state.get("step", 0)) if isinstance(state, dict) else 0
        self.epoch = int(state.get("epoch", 0)) if isinstance(state, dict) else 0
        latest = {"path": self.resume_from, "step": self.step_count, "epoch": self.epoch}
        self.reporter.update(step=self.step_count, epoch=self.epoch, latest_checkpoint=latest)
        return state

    def step(self, n=1, **fields):
        """Counts ``n`` optimizer steps and records fields (``loss``, ``lr``, ...). On a stop request,
        ends the attempt with state ``stopped`` at the latest checkpoint and exit 75."""
        self.step_count += n
        self.reporter.update(state="running", step=self.step_count, **fields)
        if self.stop_requested:
            self.reporter.finish("stopped", message="stopped on request; resumes from the latest checkpoint")
            sys.exit(RETRY)

    def report(self, **fields):
        """Records fields without counting a step (``state="evaluating"``, ``val_loss``, ...)."""
        self.reporter.update(**fields)

    def checkpoint(self, state, epoch=None):
        """Saves ``state`` atomically at the current step and records it as the latest checkpoint.
        ``state`` should hold ``step`` and ``epoch`` too; they are added when missing."""
        if epoch is not None:
            self.epoch = int(epoch)
        if isinstance(state, dict):
            state.setdefault("step", self.step_count)
            state.setdefault("epoch", self.epoch)
        if not self.is_main:
            # Rank 0 writes the job's checkpoint; with DDP every rank holds the same state.
            return checkpoint.path_for(self.checkpoint_dir, self.step_count)
        self.reporter.update(state="checkpointing")
        path = checkpoint.save(state, self.checkpoint_dir, self.step_count)
        latest = {"path": path, "step": self.step_count, "epoch": self.epoch}
        # Written at once (one atomic write per checkpoint, not per step): a crash right after the
        # rename still leaves a progress file that names this checkpoint.
        self.reporter.write(state="running", epoch=self.epoch, latest_checkpoint=latest)
        checkpoint.prune(self.checkpoint_dir, self.keep, protect=[path])
        return path

    def end_epoch(self, epoch, state, **fields):
        """The epoch boundary: checkpoint, then, if a pause was asked for, state ``paused`` and exit 0."""
        self.report(**fields)
        self.checkpoint(state, epoch=epoch)
        pause, stop = self.agree()
        if stop:
            self.reporter.finish("stopped", message=f"stopped on request after epoch {epoch}")
            _leave_together(RETRY)
        if pause:
            self.reporter.finish("paused", message=f"paused after epoch {epoch}")
            _leave_together(OK)

    def agree(self):
        """``(pause, stop)`` as every rank sees them: each is asked for if any rank was asked. A
        collective (all ranks must call it together; ``end_epoch`` does), and the one place where
        ranks leave together. One process: its own flags."""
        pause, stop = self.pause_requested, self.stop_requested
        dist = _distributed()
        if dist is None:
            return pause, stop
        import torch

        device = "cpu"
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flags = torch.tensor([int(pause), int(stop)], dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        pause, stop = bool(flags[0].item()), bool(flags[1].item())
        return pause, stop

    def complete(self, weights_sha256=None, message="completed", **fields):
        """Writes ``completed`` and exits 0."""
        self.reporter.finish("completed", weights_sha256=weights_sha256, message=message, **fields)
        sys.exit(OK)

    def fail(self, message, code=CONFIG):
        """Writes ``failed`` with ``message`` and exits ``code`` (75 to be restarted)."""
        print(message, file=sys.stderr)
        self.reporter.finish("failed", message=message)
        sys.exit(code)
