"""A plain Hugging Face Trainer script that knows nothing of trainerd: the kind people already have.

A tiny BERT classifier built from a config (no download) on a synthetic task, saving a checkpoint
every --save-steps into --output-dir (`checkpoint-N/`, with `trainer_state.json` written last), and
resuming when given --resume_from_checkpoint, as every Trainer script does. trainerd supervises it
unchanged:

    trainctl submit --checkpoint-glob 'out/checkpoint-*' --checkpoint-marker trainer_state.json \
        --resume-arg '--resume_from_checkpoint {checkpoint}' \
        --progress-regex '(?P<step>\\d+)/(?P<total>\\d+) \\[' \
        -- python examples/hf_trainer_tiny.py --output-dir out

It prints `weights_sha256 HEX` at the end: a run killed and resumed prints the uninterrupted run's.
"""

import argparse
import hashlib
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments


class Synthetic(torch.utils.data.Dataset):
    """Token sequences whose label is whether token 7 occurs in them: learnable, deterministic."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 64, (n, 16), generator=g)
        self.y = (self.x == 7).any(dim=1).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


class Slow(TrainerCallback):
    """Stretches each step so a test (or a person) can watch and interrupt the run."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def weights_sha256(model):
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="out")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--resume_from_checkpoint", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_steps=10,
        report_to=[],
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        save_safetensors=True,
    )
    trainer = Trainer(model=model, args=training, train_dataset=Synthetic(512, seed=1), callbacks=[Slow(args.step_sleep)])
    if args.resume_from_checkpoint:
        print(f"resuming from {args.resume_from_checkpoint}", flush=True)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    print(f"weights_sha256 {weights_sha256(trainer.model)}", flush=True)


if __name__ == "__main__":
    main()
