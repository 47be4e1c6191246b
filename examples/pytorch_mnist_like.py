"""An MNIST-like PyTorch training script supervised by trainerd through the Python SDK.

Ten classes of 28x28 "digits" generated from a fixed seed (no download), an MLP, Adam, a step LR
schedule, early stopping on the validation loss. Everything that decides the next step is in the
checkpoint (model, optimizer, scheduler, epoch, best validation loss and patience counter, the data
seed), and the data order of an epoch is a function of (seed, epoch), so a run that is killed,
restarted, paused and resumed ends with exactly the weights of an uninterrupted one on the CPU.

    trainctl submit -- .venv/bin/python examples/pytorch_mnist_like.py --epochs 8
    python examples/pytorch_mnist_like.py --epochs 3       # standalone: writes ./trainerd-run/
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python", "src"))

import torch  # noqa: E402
import trainerd  # noqa: E402


def make_data(seed, n, split):
    """n noisy samples of 10 prototype "digits" (the same prototypes for every split of a seed)."""
    prototypes = torch.rand(10, 784, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed * 7919 + split)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = prototypes[labels] + 3.0 * torch.randn(n, 784, generator=g)
    return images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds of sleep per step (tests)")
    args = parser.parse_args()

    # One thread: the same sums in the same order on every run, so the digests match bit for bit.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train_x, train_y = make_data(args.seed, args.batch_size * args.steps_per_epoch, split=0)
    val_x, val_y = make_data(args.seed, 512, split=1)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    best, bad_epochs = float("inf"), 0

    run = trainerd.Run(total_epochs=args.epochs, total_steps=args.epochs * args.steps_per_epoch)
    state = run.resume()
    if state is not None:
        if state["seed"] != args.seed:
            run.fail(f"the checkpoint was made with seed {state['seed']}, not {args.seed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best, bad_epochs = state["best_val_loss"], state["bad_epochs"]
    start = state["epoch"] if state is not None else 0
    first_step = run.step_count

    for epoch in range(start, args.epochs):
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        model.train()
        for i in range(args.steps_per_epoch):
            batch = order[i * args.batch_size : (i + 1) * args.batch_size]
            loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(args.step_sleep)
            run.step(loss=loss.item(), lr=scheduler.get_last_lr()[0], epoch=epoch + 1)
        scheduler.step()
        run.report(state="evaluating")
        model.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.cross_entropy(model(val_x), val_y).item()
        if val_loss < best:
            best, bad_epochs = val_loss, 0
        else:
            bad_epochs += 1
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_val_loss": best,
            "bad_epochs": bad_epochs,
            "seed": args.seed,
        }
        run.end_epoch(epoch + 1, state, val_loss=val_loss)
        if bad_epochs >= args.patience:
            break
    digest = trainerd.weights_sha256(model)
    print(f"attempt {run.attempt}: {run.step_count - first_step} steps, from step {first_step}")
    print(f"weights_sha256 {digest}")
    run.complete(weights_sha256=digest, val_loss=best)


if __name__ == "__main__":
    main()
