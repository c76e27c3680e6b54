"""The help a user of this package reads: one line per subcommand, and for ``fit`` / ``validate`` / ``test`` /
``predict`` the options people change, in a screen. The parser's whole list (every key of the model, data and
trainer, about 900 lines) stays behind ``--help full``.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["SUBCOMMAND_HELP", "help_request", "short_help"]

#: What each subcommand does, as ``cli.py --help`` lists it: one line each in an 80-column terminal.
SUBCOMMAND_HELP = {
    "fit": "train from a config, then test the best checkpoint",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split, per class",
    "predict": "predict the classes of new images with a checkpoint",
    "summary": "print the model as Keras' model.summary(), no training",
    "preview": "draw training images before and after augmentation",
    "export": "export a checkpoint to ONNX, pt2 or TorchScript",
    "optimize": "write a config's dataset as LitData shards",
    "tune": "sweep a config's keys with Optuna (KerasTuner's job)",
}

_CONFIG = """\
config:
  -c, --config CONFIG   a YAML file, or a shipped config by name (lenet_fashion_mnist); give several
                        to compose pieces, later ones winning
  --print_config        print the whole resolved config (every key and default) and exit
  --seed_everything N   the random seed (default 42)"""

_MODEL = """\
model (any key of the config: --model.init_args.KEY VALUE):
  --model.init_args.net.init_args.KEY VALUE
                        the network's keys: filters, kernel_size, dense_units, padding, pool_size,
                        batch_norm, conv_dropout, dense_dropout, regularizers, layer_regularizers
  --model.init_args.optimizer.init_args.lr LR
                        the optimizer's learning rate (the optimizer: --model.init_args.optimizer)
  --model.init_args.label_smoothing X
                        Keras' label smoothing of the cross-entropy (default 0)"""

_DATA = """\
data:
  --data PIECE          a data piece by path or name (fashion_mnist, mnist, cifar10, shards)
  --data.init_args.batch_size N
                        images per batch and process
  --data.init_args.val_split X
                        the share (0.2) or number (5000) of training images held out to validate
  --data.init_args.augmentation PIECE
                        augmentation of the training images (configs/augmentation/slides.yaml)
  --data.init_args.num_workers N
                        DataLoader workers (default: chosen from the cores and the augmentation)"""

_TRAINER = """\
trainer and devices:
  --trainer PIECE       a trainer piece by path or name: smoke, ddp, ddp_cpu, ddp_multinode, bf16,
                        fp16, time_budget, single_device
  --trainer.max_epochs N
  --trainer.accelerator {cpu,gpu,auto}
  --trainer.devices N   devices per node (\"auto\": all)
  --trainer.num_nodes N
  --trainer.precision {auto,32-true,bf16-mixed,16-mixed}
                        auto: bf16-mixed where the CPU or GPU computes bfloat16"""

_SECTIONS = {
    "fit": (
        "Train a model from a config, then test its best checkpoint.",
        [
            _CONFIG,
            _MODEL,
            _DATA,
            _TRAINER,
            """\
checkpoints:
  --ckpt_path PATH      resume from this checkpoint; \"last\": this experiment's newest one
  --checkpoint.monitor KEY
                        the logged value that picks the best checkpoint (default val/loss)
  --test_after_fit BOOL test the best checkpoint when training ends (default true)""",
        ],
    ),
    "validate": ("Evaluate a checkpoint on the validation split.", []),
    "test": ("Evaluate a checkpoint on the test split: accuracy and a per-class table.", []),
    "predict": (
        "Predict with a checkpoint: new images (--inputs), or the split it was tested on.",
        [
            """\
inputs and outputs:
  --inputs PATH         a folder of images (sub-folders too), one image file, or a uint8 .npy array
                        (N, H, W[, C]); without it, the test split of the checkpoint's data
  --predictions.top_k K the K most likely classes per image in predictions.csv (default 3)""",
        ],
    ),
}

_CHECKPOINT = """\
checkpoint:
  --ckpt_path PATH      the checkpoint (it holds the model and the data it was trained on)
  -c, --config CONFIG   optional: a config for other data or trainer settings (the model still comes
                        from the checkpoint)"""

_EVALUATION_TRAINER = """\
trainer and devices:
  --trainer PIECE       a trainer piece by path or name (ddp, single_device, ...)
  --trainer.accelerator {cpu,gpu,auto}
  --trainer.devices N
  --data.init_args.batch_size N"""


def help_request(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """What ``argv`` asks of the help: the subcommand whose short help to print (else ``None``), and the arguments
    to run, where ``--help full`` has become the parser's own ``--help``."""
    if not argv or argv[0] not in _SECTIONS:
        return None, argv
    for i, arg in enumerate(argv):
        if arg == "--help=full" or (arg in ("-h", "--help") and argv[i + 1 : i + 2] == ["full"]):
            return None, [*argv[:i], "--help", *argv[i + (1 if arg == "--help=full" else 2) :]]
        if arg in ("-h", "--help"):
            return argv[0], argv
    return None, argv


def short_help(subcommand: str, prog: str = "cli.py") -> str:
    """The short help of ``subcommand`` (``fit``, ``validate``, ``test`` or ``predict``)."""
    about, sections = _SECTIONS[subcommand]
    if subcommand != "fit":
        sections = [_CHECKPOINT, *sections, _EVALUATION_TRAINER]
        usage = f"usage: {prog} {subcommand} --ckpt_path CKPT [--config CONFIG] [--KEY VALUE ...]"
    else:
        usage = f"usage: {prog} fit --config CONFIG [--config MORE ...] [--KEY VALUE ...]"
    closing = (
        f"Any key of the resolved config (--print_config) can be given as --KEY VALUE. Every option, with its\n"
        f"type and default: {prog} {subcommand} --help full (about 900 lines)."
    )
    return "\n\n".join([usage, about, *sections, closing])
