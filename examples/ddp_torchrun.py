"""A complete DDP training script under trainerd: model, optimizer, LR scheduler, a DistributedSampler
with ``set_epoch``, and the trainerd SDK's five lines, unchanged for many ranks.

    trainctl submit --gpus 2 -- .venv/bin/torchrun --standalone --nproc-per-node 2 \\
        examples/ddp_torchrun.py --epochs 4

On CPUs it runs on gloo; with CUDA_VISIBLE_DEVICES set (trainctl --gpus N) each rank takes its
LOCAL_RANK's GPU and NCCL. Only rank 0 reports and checkpoints; every rank resumes from the same
checkpoint; pause and stop are agreed by all ranks at each epoch's end (``run.end_epoch``), so a
paused, killed or restarted run ends with the weights of an uninterrupted one (the digest it prints).
"""

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

# The SDK from this checkout when it is not installed (pip install sdk/python installs it).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python", "src"))
import trainerd  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step, to watch it train")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "") != ""
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # The data: a fixed synthetic regression set, the same on every rank (seeded), split by the sampler.
    generator = torch.Generator().manual_seed(0)
    samples = args.steps_per_epoch * args.batch_size * world
    x = torch.randn(samples, 32, generator=generator)
    y = x @ torch.randn(32, 1, generator=generator) + 0.1 * torch.randn(samples, 1, generator=generator)
    sampler = DistributedSampler(TensorDataset(x, y), num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, sampler=sampler)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)

    run = trainerd.Run(total_epochs=args.epochs, total_steps=args.epochs * args.steps_per_epoch)
    state = run.resume()
    start_epoch, first_step = 0, 0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, first_step = state["epoch"], state["step"]

    steps = 0
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            loss = nn.functional.mse_loss(ddp(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            run.step(loss=loss.item(), lr=scheduler.get_last_lr()[0])
            if args.step_sleep:
                time.sleep(args.step_sleep)
        scheduler.step()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
        }
        run.end_epoch(epoch + 1, state)

    digest = trainerd.weights_sha256(model)
    if rank == 0:
        print(f"attempt {run.attempt}: {steps} steps, from step {first_step}", flush=True)
        print(f"weights_sha256 {digest}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    run.complete(weights_sha256=digest)


if __name__ == "__main__":
    main()
