"""Atomic checkpoints (protocol section 5): complete or absent, never half-written.

A checkpoint is a directory ``step-NNNNNNNNNNNN`` holding ``state.pt`` (``torch.save`` of your dict
of state: model, optimizer, scheduler, epoch, best metric, ...) or ``state.pkl`` (pickle) when torch
is not installed. It is written under a temporary name, fsynced, and renamed into place."""

import os
import pickle
import shutil

try:
    import torch
except ImportError:  # The SDK works without torch; checkpoints are then pickles.
    torch = None


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def path_for(checkpoint_dir, step):
    """Where the checkpoint of ``step`` is (or will be) in ``checkpoint_dir``."""
    return os.path.join(checkpoint_dir, f"step-{int(step):012d}")


def save(state, checkpoint_dir, step):
    """Saves ``state`` as checkpoint ``step`` under ``checkpoint_dir`` and returns its path."""
    checkpoint_dir = os.path.abspath(checkpoint_dir)
    os.makedirs(checkpoint_dir, exist_ok=True)
    final = path_for(checkpoint_dir, step)
    tmp = os.path.join(checkpoint_dir, f".tmp-step-{int(step):012d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    name = "state.pt" if torch is not None else "state.pkl"
    with open(os.path.join(tmp, name), "wb") as f:
        if torch is not None:
            torch.save(state, f)
        else:
            pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if os.path.exists(final):
        # A checkpoint of the same step from an attempt that died after writing it: keep one copy.
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(checkpoint_dir)
    return final


def load(path):
    """Loads the state a checkpoint holds. Raises ``OSError`` or ``ValueError`` when it cannot."""
    pt, pkl = os.path.join(path, "state.pt"), os.path.join(path, "state.pkl")
    if os.path.exists(pt):
        if torch is None:
            raise ValueError(f"{pt} needs torch to load")
        # Your own checkpoint: full unpickling (optimizer and RNG states are more than weights).
        return torch.load(pt, map_location="cpu", weights_only=False)
    if os.path.exists(pkl):
        with open(pkl, "rb") as f:
            return pickle.load(f)
    raise ValueError(f"{path} holds no state.pt or state.pkl")


def prune(checkpoint_dir, keep, protect=()):
    """Removes all but the newest ``keep`` checkpoints, never one in ``protect``."""
    names = sorted(n for n in os.listdir(checkpoint_dir) if n.startswith("step-"))
    protected = {os.path.basename(os.fspath(p)) for p in protect if p}
    for name in names[:-keep] if keep > 0 else []:
        if name not in protected:
            shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
