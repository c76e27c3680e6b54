"""The command line: LightningCLI over :class:`ImageClassifier` and the datamodules.

``python cli.py {fit,validate,test,predict} --config configs/<name>.yaml`` (and ``--print_config``), and the
package's tools as subcommands of the same CLI: ``summary`` and ``preview`` (same config, no training) and
``export --ckpt_path … --format onnx|torchscript``. The datamodule's number of classes, image shape
and preprocessing are linked into the model and its network, so they are never typed twice; a pretrained network's
weights decide the datamodule's normalization; ``test_after_fit`` (on by default) evaluates the best checkpoint on
the test split when ``fit`` ends. Runs log into ``runs/<name of the first --config file>/version_N``.

``validate``/``test``/``predict``/``export`` with ``--ckpt_path`` need no config: the model, and the data it was trained on,
are rebuilt from the checkpoint (``--inputs`` predicts on new images with the checkpoint's preprocessing instead).
"""

from lightning_cnn.cli.command import CNNCLI
from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.cli.main import main

__all__ = ["CNNCLI", "ConfigError", "main"]
