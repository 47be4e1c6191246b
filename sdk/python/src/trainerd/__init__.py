"""trainerd's trainer protocol for Python training loops.

Five lines supervise an existing PyTorch loop: heartbeats, pause at epoch boundaries, stop on
SIGTERM, exact resume from atomic checkpoints, and the exit codes trainerd understands::

    run = trainerd.Run(total_epochs=EPOCHS)
    state = run.resume()                      # your dict, or None on a fresh start
    ...                                       # restore model/optimizer/scheduler from state
    run.step(loss=loss.item())                # after each optimizer step
    run.end_epoch(epoch + 1, {"model": model.state_dict(), "optimizer": opt.state_dict(), ...})
    run.complete(weights_sha256=trainerd.weights_sha256(model))

The trainer side needs nothing beyond the standard library; torch is used only when installed
(checkpoints). ``trainerd.Client`` (module ``trainerd.client``) talks to trainerd's gRPC API from
notebooks and scripts; it, and only it, imports grpcio, on first use.
"""

import hashlib

from . import checkpoint
from .control import Control
from .progress import PROTOCOL_VERSION, Reporter
from .run import CONFIG, DATA_ERR, OK, RETRY, Run

__all__ = [
    "CONFIG",
    "DATA_ERR",
    "OK",
    "PROTOCOL_VERSION",
    "RETRY",
    "Control",
    "Reporter",
    "Run",
    "checkpoint",
    "weights_sha256",
]


_CLIENT_NAMES = {
    "Client",
    "TrainerdError",
    "NotFound",
    "InvalidArgument",
    "FailedPrecondition",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "Unavailable",
    "AlreadyExists",
}


def __getattr__(name):
    # The client is imported on first use, so a training process never loads grpcio.
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError("module 'trainerd' has no attribute %r" % name)


def weights_sha256(model):
    """SHA-256 of a model's parameters and buffers, in ``state_dict`` order: equal digests mean equal
    weights, bit for bit. Needs torch; no numpy."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(bytes(raw.tolist()))
    return digest.hexdigest()
