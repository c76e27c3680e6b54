"""Every shipped YAML prints its config and runs `fit` for a few batches on tiny data in the real formats;
the CLI links, checkpoints, summaries and errors behave as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_cnn import ImageClassifier
from lightning_cnn.callbacks import KerasModelSummary
from lightning_cnn.cli import CNNCLI
from tests.conftest import CONFIGS, REPO_ROOT, write_fake_cifar, write_fake_mnist

# Experiments are the YAML files at the top of configs/ and in its sub-folders other than the reusable pieces.
PIECES = {"augmentation", "callbacks", "data", "model", "search", "trainer"}
EXPERIMENTS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.parent == CONFIGS or p.relative_to(CONFIGS).parts[0] not in PIECES
)
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]

# Extra overrides a config needs to run offline in a few seconds (weights to fetch, very large inputs...).
OFFLINE_OVERRIDES: dict[str, list[str]] = {
    # ImageNet weights need the network; the 224×224 resize of the weights' preset is too slow for a smoke run.
    "vgg16_finetune_cifar10.yaml": [
        "--model.init_args.net.init_args.weights",
        "none",
        "--data.init_args.image_size",
        "32",
    ],
    "vgg16_finetune_augment_cifar10.yaml": [
        "--model.init_args.net.init_args.weights",
        "none",
        "--data.init_args.image_size",
        "32",
    ],
    # The fake MNIST set is too small for these configs' 200- and 5000-image validation splits.
    "best_fashion_mnist.yaml": ["--data.init_args.val_split", "20"],
    "best_fashion_mnist_epochs.yaml": ["--data.init_args.val_split", "20"],
    "finetune_fashion_5to9.yaml": ["--data.init_args.val_split", "20", "--data.init_args.train_size", "50"],
    "scratch_fashion_5to9.yaml": ["--data.init_args.val_split", "20", "--data.init_args.train_size", "50"],
    "finetune_augment_fashion_5to9.yaml": ["--data.init_args.val_split", "20", "--data.init_args.train_size", "50"],
    "finetune_unfreeze_fashion_5to9.yaml": ["--data.init_args.val_split", "20", "--data.init_args.train_size", "50"],
    "finetune_full_fashion_5to9.yaml": ["--data.init_args.val_split", "20", "--data.init_args.train_size", "50"],
}


def _data_class(config: Path) -> str:
    data = yaml.safe_load(config.read_text())["data"]
    if isinstance(data, str):  # a piece, named relative to the experiment's file
        data = yaml.safe_load((config.parent / data).read_text())
    return data["class_path"]


def _fake_data_for(config: Path, root: Path) -> list[str]:
    data_class = _data_class(config)
    if "CIFAR100" in data_class:
        folder = write_fake_cifar(root / "cifar100", 100, n_per_batch=120)
    elif "CIFAR10" in data_class:
        folder = write_fake_cifar(root / "cifar10", 10)
    elif "MNIST" in data_class:
        folder = write_fake_mnist(root / "mnist")
    else:
        return []  # a datamodule that brings its own offline data
    return ["--data.init_args.data_dir", str(folder), "--data.init_args.download", "false"]


def run_cli(args: list[str]) -> CNNCLI:
    return CNNCLI(args=args)


def test_there_are_experiment_configs():
    names = {p.name for p in EXPERIMENTS}
    assert {"lenet_mnist.yaml", "lenet_fashion_mnist.yaml", "functional_cnn_binary.yaml", "bn_cnn_mnist.yaml"} <= names


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_fits_a_few_batches(config, in_tmp, capsys):
    args = ["fit", "--config", str(config), *SMOKE, *_fake_data_for(config, in_tmp)]
    cli = run_cli(args + OFFLINE_OVERRIDES.get(config.name, []))
    assert cli.trainer.state.finished
    assert "Total params:" in capsys.readouterr().out
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "config.yaml").exists()
    assert (log_dir / "checkpoints" / "last.ckpt").exists()
    assert (log_dir / "learning_curves.png").exists()


def test_test_after_fit_draws_the_confusion_matrix_without_overwriting(in_tmp, capsys):
    config = CONFIGS / "lenet_mnist.yaml"
    cli = run_cli(["fit", "--config", str(config), *SMOKE, *_fake_data_for(config, in_tmp)])
    log_dir = Path(cli.trainer.log_dir)
    assert "test/acc" in cli.trainer.callback_metrics
    first = (log_dir / "confusion_matrix.png").read_bytes()
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert (log_dir / "confusion_matrix.png").read_bytes() == first
    assert (log_dir / "confusion_matrix_1.png").exists()
    assert f"Saved confusion matrix: {log_dir / 'confusion_matrix_1.png'}" in capsys.readouterr().out


def test_bn_cnn_fit_prints_the_slides_summary(in_tmp, capsys):
    run_cli(["fit", "--config", str(CONFIGS / "bn_cnn_mnist.yaml"), *SMOKE,
             *_fake_data_for(CONFIGS / "bn_cnn_mnist.yaml", in_tmp)])  # fmt: skip
    out = capsys.readouterr().out
    assert "Total params: 358,210" in out
    assert "Trainable params: 357,770" in out
    assert "Non-trainable params: 440" in out


def test_links_fill_the_network_from_the_datamodule(in_tmp):
    cli = CNNCLI(
        args=[
            "--config",
            str(CONFIGS / "functional_cnn_binary.yaml"),
            *_fake_data_for(CONFIGS / "lenet_mnist.yaml", in_tmp),
        ],
        run=False,
    )
    net = cli.model.net
    assert (net.in_channels, net.num_classes, net.input_size, net.num_outputs) == (1, 2, (64, 64), 1)
    assert cli.model.input_shape == (1, 64, 64) and cli.model.binary


def test_checkpoint_reload_gives_the_same_predictions(in_tmp):
    config = CONFIGS / "lenet_mnist.yaml"
    cli = run_cli(
        ["fit", "--config", str(config), *SMOKE, *_fake_data_for(config, in_tmp), "--test_after_fit", "false"]
    )
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    reloaded = ImageClassifier.load_from_checkpoint(last)  # rebuilds the net from the checkpoint alone
    assert type(reloaded.net).__name__ == "LeNet"
    assert reloaded.net.backbone.conv1.regularizers.kernel.l2 == pytest.approx(1e-4)
    x = torch.randn(8, 1, 28, 28)
    cli.model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(cli.model.predict_step(x, 0), reloaded.predict_step(x, 0))


def test_second_run_gets_its_own_version_folder(in_tmp):
    config = CONFIGS / "lenet_mnist.yaml"
    args = ["fit", "--config", str(config), *SMOKE, *_fake_data_for(config, in_tmp), "--test_after_fit", "false"]
    first = Path(run_cli(args).trainer.log_dir)
    first_config = (first / "config.yaml").read_text()
    second = Path(run_cli(args).trainer.log_dir)
    assert first != second and (first / "config.yaml").read_text() == first_config
    assert (first / "checkpoints" / "last.ckpt").exists() and (second / "checkpoints" / "last.ckpt").exists()
    assert (first / "metrics.csv").exists() and list(first.glob("events.out.tfevents*"))


def test_unknown_yaml_key_fails_clearly(in_tmp, capsys):
    bad = in_tmp / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    net:\n      init_args:\n        filterz: [4, 12]\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "filterz" in capsys.readouterr().err


def test_summary_command_prints_without_training():
    out = subprocess.run(
        [sys.executable, "cli.py", "summary", "--config", str(CONFIGS / "bn_cnn_mnist.yaml")],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Total params: 358,210" in out.stdout and "bn1 (BatchNormalization)" in out.stdout
    assert "(None, 32, 28, 28)" in out.stdout  # output shapes, on by default


def test_summary_options_come_from_the_config(in_tmp, capsys):
    config = str(CONFIGS / "lenet_mnist.yaml")
    run_cli(["summary", "--config", config, "--summary.show_shapes", "false"])
    printed = capsys.readouterr().out
    assert "Total params: 62,226" in printed and "(None," not in printed


def test_summary_switch_turns_the_fit_table_off(in_tmp, capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["summary"] == {"enabled": True, "show_shapes": True}
    cli = CNNCLI(args=["--config", str(CONFIGS / "lenet_mnist.yaml"), "--summary.enabled", "false"], run=False)
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, KerasModelSummary)]
    assert callback.enabled is False


@pytest.mark.parametrize(
    "override,message",
    [
        (["--model.init_args.net.init_args.activation", "relux"], "error: Unknown activation 'relux'; choose one of"),
        (["--data.init_args.val_split", "1.5"], "error: val_split=1.5; use a fraction"),
        (["--data.init_args.data_dir", "nowhere", "--data.init_args.download", "false"], "error: MNIST not found"),
    ],
)
def test_bad_values_and_missing_data_end_with_one_error_line(in_tmp, capsys, override, message):
    from lightning_cnn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)


def test_a_global_batch_that_does_not_split_over_the_processes_fails_before_anything_starts(in_tmp, capsys):
    from lightning_cnn.cli import main

    data = ["--data.init_args.data_dir", str(write_fake_mnist(in_tmp / "mnist")), "--data.init_args.download", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *data, "--data.init_args.global_batch_size", "33",
              "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: global_batch_size=33 does not split over 2 processes")
    assert not (in_tmp / "runs").exists()  # no process started, no version folder, no config


def test_top_level_help_lists_the_subcommands(capsys):
    # A newcomer's first command: `python cli.py --help` (no subcommand yet) prints the subcommands and exits 0.
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert all(name in out for name in ("fit", "validate", "test", "predict", "summary", "preview", "export")), out


def test_a_fast_dev_run_writes_nothing(in_tmp):
    data = ["--data.init_args.data_dir", str(write_fake_mnist(in_tmp / "mnist")), "--data.init_args.download", "false"]
    before = sorted(in_tmp.rglob("*"))
    CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *data, "--trainer.fast_dev_run", "1",
                 "--test_after_fit", "true"])  # fmt: skip
    assert sorted(in_tmp.rglob("*")) == before  # no checkpoints/last.ckpt, pictures or reports in the working folder


def test_enable_checkpointing_false_trains_and_tests_without_checkpoints(in_tmp, capsys):
    data = ["--data.init_args.data_dir", str(write_fake_mnist(in_tmp / "mnist")), "--data.init_args.download", "false"]
    cli = run_cli(["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *SMOKE, *data,
                   "--trainer.enable_checkpointing", "false"])  # fmt: skip
    assert cli.trainer.state.finished
    assert not cli.trainer.checkpoint_callbacks
    assert not list(Path(cli.trainer.log_dir).rglob("*.ckpt"))
    assert "test/acc" in capsys.readouterr().out  # test_after_fit used the final weights


def test_importing_the_cli_leaves_the_warning_filters_alone():
    # The CLI silences a few Lightning notices while it runs (CNNCLI.__init__), not for the importing process.
    code = (
        "import warnings, pytorch_lightning.cli\n"
        "before = list(warnings.filters)\n"
        "import lightning_cnn.cli\n"
        "print([str(f[1].pattern) for f in warnings.filters if f not in before and f[1] is not None])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    added = out.stdout.strip()
    assert not any(word in added for word in ("dirpath", "treespec", "configure_optimizers")), added


def test_the_version_is_written_once():
    from importlib.metadata import version

    import lightning_cnn

    assert version("lightning_cnn") == lightning_cnn.__version__
    assert "version =" not in (REPO_ROOT / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]


def test_an_integer_batch_limit_stays_that_many_batches(capsys):
    # Lightning reads an int as a number of batches and a float as a fraction: 1 must not become 1.0 (every batch).
    from lightning_cnn.cli import main

    args = ["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *SMOKE, "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "0.5", "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["limit_val_batches"] == 1 and isinstance(trainer["limit_val_batches"], int)
    assert trainer["limit_train_batches"] == 4 and isinstance(trainer["limit_train_batches"], int)  # from YAML
    assert trainer["limit_test_batches"] == 0.5


def test_a_disk_that_fills_up_while_a_checkpoint_is_written_is_named(small_disk, tmp_path):
    # A real 1 MiB disk: the first LeNet checkpoint (about 0.8 MB) fits, the second does not.
    disk = small_disk("1m")
    mnist = write_fake_mnist(tmp_path / "mnist")
    args = ["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *SMOKE, "--data.init_args.data_dir", str(mnist),
            "--data.init_args.download", "false"]  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), *args], cwd=disk, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    folder = "runs/lenet_mnist/version_0/checkpoints"
    assert last.startswith(f"error: cannot write {folder}: No space left on device"), last
    kept = list((disk / folder).glob("*.ckpt"))
    assert kept and all(torch.load(path, weights_only=True)["epoch"] == 0 for path in kept)  # whole files only


def test_the_cli_closes_a_finished_runs_process_group(monkeypatch, tmp_path):
    """Left open, gloo's threads can abort the process at exit (-6) after a run that succeeded: main() closes it."""
    import torch.distributed as dist

    cli_main = sys.modules["lightning_cnn.cli.main"]  # the module (the package's `main` names the function)

    def a_ddp_run(args):  # stands in for a fit whose strategy opened a process group
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)

    monkeypatch.setattr(cli_main, "CNNCLI", a_ddp_run)
    try:
        cli_main.main(["fit"])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
