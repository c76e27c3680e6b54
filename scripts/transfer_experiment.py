"""Transfer learning offline, on real data: pretrain → fine-tune with the conv part frozen → the same from scratch.

    python scripts/transfer_experiment.py            # the README's numbers (a few minutes on 2 CPU cores)

1. ``configs/transfer/pretrain_fashion_0to4.yaml``: the slides' BatchNorm/Dropout CNN on Fashion-MNIST classes
   0–4, all their training images;
2. ``configs/transfer/finetune_fashion_5to9.yaml``: classes 5–9 from 200 labelled images, the conv part loaded
   from step 1's best checkpoint and frozen (FreezeBackbone), a new dense head trained;
3. ``configs/transfer/scratch_fashion_5to9.yaml``: step 2 without the pretrained conv part (same data, seed,
   optimizer, epochs).

Prints both test accuracies (on the 5,000 test images of classes 5–9). Fashion-MNIST is read from
``data.data_dir``, Debian's ``dataset-fashion-mnist`` package, or downloaded. Extra arguments are passed to all
three runs, e.g. ``--trainer.accelerator cpu``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning_cnn.cli import CNNCLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "transfer"


def _fit(config: str, extra: list[str]) -> CNNCLI:
    return CNNCLI(args=["fit", "--config", str(CONFIGS / config), *extra])


def _test_accuracy(cli: CNNCLI) -> float:
    return float(cli.trainer.callback_metrics["test/acc"])


def main(extra: list[str]) -> None:
    start = time.perf_counter()
    pretrain = _fit("pretrain_fashion_0to4.yaml", extra)
    checkpoint = pretrain.trainer.checkpoint_callback.best_model_path
    if not checkpoint:
        raise SystemExit("pretraining saved no checkpoint; check the pretrain run's output above.")
    weights = ["--trainer.callbacks.init_args.backbone_weights", checkpoint]
    finetune = _fit("finetune_fashion_5to9.yaml", [*weights, *extra])
    scratch = _fit("scratch_fashion_5to9.yaml", extra)
    minutes = (time.perf_counter() - start) / 60
    print(
        "\nTransfer experiment (Fashion-MNIST classes 5-9 from 200 labelled images; test accuracy, 5,000 images)\n"
        f"  pretrained on classes 0-4 ({_test_accuracy(pretrain):.2%} on their test set): {checkpoint}\n"
        f"  fine-tuned, conv part frozen: {_test_accuracy(finetune):.2%}\n"
        f"  from scratch:                 {_test_accuracy(scratch):.2%}\n"
        f"  total time: {minutes:.1f} min",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
