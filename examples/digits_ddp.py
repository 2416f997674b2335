"""The digits demo, data-parallel: the same KerasModel and fit as ``digits_mlp.py``, launched by ``torchrun``.

Nothing in the training code knows about processes. Under ``torchrun`` kerasish initialises the process group (NCCL
on GPUs, gloo on CPU), puts each process on its own GPU (``cuda:LOCAL_RANK``), wraps the net in
``DistributedDataParallel``, gives each process its shard of the train loader (reshuffled every epoch), splits the
val set without repeating a sample, reduces the loss and metrics across processes, and lets only rank 0 print and
write files. Run alone, it trains in one process::

    python examples/digits_ddp.py                                   # one process
    torchrun --standalone --nproc_per_node=2 examples/digits_ddp.py # 2 processes on this machine (CPUs or GPUs)
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 examples/digits_ddp.py

The batch size is per process: 2 processes with ``BATCH_SIZE = 32`` train on 64 samples per optimizer step. Run it
again with the same command and it resumes from ``runs/digits_ddp/state.pt`` (delete the folder to start over).
It exits non-zero when the validation accuracy falls below ``MIN_VAL_ACC``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from digits_mlp import MIN_VAL_ACC, SEED, make_loaders, make_model, make_net  # the one-process demo's, from this folder

from kerasish import CSVLogger


def main(epochs: int, out: Path) -> float:
    """Trains (or resumes), evaluates and predicts; returns the argmax accuracy of ``predict`` on the val set."""
    torch.manual_seed(SEED)  # every process starts from the same weights (DDP also copies rank 0's to the others)
    train_dl, val_dl = make_loaders()
    model = make_model(make_net())  # plain DataLoaders and a plain KerasModel, as in one process
    out.mkdir(parents=True, exist_ok=True)  # on every node: the files are rank 0's, but fit checks the paths
    model.fit(
        train_dl,
        val_dl,
        epochs=epochs,
        monitor="val_acc",
        mode="max",
        patience=5,
        ckpt_path=out / "best.pt",
        callbacks=[CSVLogger(out / "history.csv", append=True)],
        state_path=out / "state.pt",
        resume=True,
    )
    scores = model.evaluate(val_dl)  # the same numbers on every rank: the whole val set, each sample once
    logits = model.predict(val_dl)  # the whole val set's outputs, in order, on every rank
    labels = torch.cat([y for _, y in val_dl])
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    if model.is_main_process:  # your own prints: ask, or every rank prints them
        print(f"{model.world_size} process(es) on {model.device}; evaluate: {scores}; predict accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/digits_ddp"))
    parser.add_argument("--min-acc", type=float, default=MIN_VAL_ACC)
    args = parser.parse_args()
    if main(args.epochs, args.out) < args.min_acc:
        sys.exit(f"validation accuracy is below the required {args.min_acc}")
