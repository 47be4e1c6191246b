"""A notebook-style use of trainerd's Python client: submit a training run, follow its loss, cancel
it. Paste the cells into Jupyter, or run it as a script:

    pip install sdk/python
    python examples/notebook_client.py [--trainer PATH_TO_trainer-proc] [--cancel-at-step N]

trainerd must be running (``trainerd``, or the systemd service); the client finds its socket as
trainctl does ($TRAINERD_SOCKET, else the default).
"""

import argparse
import os

import trainerd
from trainerd.client import state_word

parser = argparse.ArgumentParser()
parser.add_argument("--trainer", default="trainer-proc", help="the trainer program (default: trainer-proc on PATH)")
parser.add_argument("--cancel-at-step", type=int, default=60)
args = parser.parse_args()

# In [1]: connect and submit.
client = trainerd.Client()
job = client.submit(
    [args.trainer, "--epochs", "50", "--steps-per-epoch", "20", "--hidden", "32", "--checkpoint-every", "10"],
    name="notebook-run",
    workdir=os.getcwd(),
)
print("submitted", job.id, state_word(job.state))

# In [2]: follow the loss as it trains (a live plot would call plt.plot(steps, losses) here).
steps, losses = [], []
for update in client.watch(job.id):
    j = update.job
    if update.kind == "progress" and j.HasField("loss"):
        steps.append(j.step)
        losses.append(j.loss)
        print("step %5d  loss %.4f" % (j.step, j.loss))
    if j.step >= args.cancel_at_step:
        break

# In [3]: enough: cancel it; the trainer is stopped and the job ends cancelled.
client.cancel(job.id)
final = client.wait(job.id)
print("ended", state_word(final.state), "at step", final.step, "with", len(losses), "loss points")
