"""TimeBudget: the learning rate follows a cosine over the wall-time budget, training stops when it is spent (and
that partial epoch is validated), a resumed run continues the budget, and bad settings get a one-line error. The
clock is a fake one advanced by a fixed time per training batch, so no test depends on the machine's speed."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import timer

from lightning_cnn import ImageClassifier
from lightning_cnn.callbacks import TimeBudget
from lightning_cnn.callbacks.time_budget import parse_duration
from lightning_cnn.models import LeNet
from tests.conftest import CONFIGS, cli_error_line, make_datamodule, write_fake_mnist

SECONDS_PER_BATCH = 10.0
LR = 0.01


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class AdvanceClock(pl.Callback):
    """Each training batch takes SECONDS_PER_BATCH on the fake clock (listed before TimeBudget)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args: object) -> None:
        self.clock.t += SECONDS_PER_BATCH


class Record(pl.Callback):
    """The learning rate each batch trained with, and the global step at each validation (listed after TimeBudget)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.validated_at: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: pl.Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)


def _cosine(spent: float, duration: float) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * spent / duration))


def _fit(folder: Path, clock: FakeClock, duration: float, ckpt_path: str | None = None, **trainer_kwargs):
    model = ImageClassifier(net=LeNet(), optimizer=lambda params: torch.optim.SGD(params, lr=LR))
    record = Record()
    trainer = pl.Trainer(
        callbacks=[AdvanceClock(clock), TimeBudget(duration), record],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, **{"max_epochs": -1, **trainer_kwargs},
    )  # fmt: skip
    data = make_datamodule("mnist", folder, batch_size=32, val_split=40)  # 200 training images: 7 batches an epoch
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, record


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(timer, "time", SimpleNamespace(monotonic=clock))  # Lightning's Timer, which TimeBudget is
    return clock


def test_the_rate_follows_a_cosine_over_the_budget_and_training_stops_when_it_is_spent(tmp_path, fake_clock):
    # 100 s at 10 s a batch: 10 batches, the 10th in the second epoch; the rate of batch k is the cosine at 10k s.
    trainer, record = _fit(tmp_path, fake_clock, duration=100)
    assert trainer.global_step == 10
    assert record.lrs == pytest.approx([_cosine(10 * k, 100) for k in range(10)])
    assert record.lrs[0] == pytest.approx(LR) and record.lrs[-1] < 0.03 * LR
    # The partial epoch the budget ended is validated too, so a checkpoint chosen by val/acc can be the last one.
    assert record.validated_at == [7, 10]


def test_a_resumed_run_continues_the_budget_that_was_left(tmp_path, fake_clock):
    # 4 batches (max_steps), saved; then resumed with a clock that reads another time altogether.
    with pytest.warns(UserWarning, match=r"training ended after 40% of its 100 budget"):
        first, record = _fit(tmp_path, fake_clock, duration=100, max_steps=4)
    assert record.lrs == pytest.approx([_cosine(10 * k, 100) for k in range(4)])
    ckpt = tmp_path / "four_steps.ckpt"
    first.save_checkpoint(ckpt)

    fake_clock.t = 5000.0
    resumed, record = _fit(tmp_path, fake_clock, duration=100, ckpt_path=str(ckpt))
    # Batches 4..9 of the uninterrupted run, from the starting rate kept in the checkpoint (the optimizer's own
    # rate there is the decayed one).
    assert record.lrs == pytest.approx([_cosine(10 * k, 100) for k in range(4, 10)])
    assert resumed.global_step == 10


def test_a_model_scheduler_beside_the_budget_is_a_one_line_error(tmp_path, fake_clock):
    model = ImageClassifier(
        net=LeNet(),
        optimizer=lambda params: torch.optim.SGD(params, lr=LR),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3),
    )
    trainer = pl.Trainer(callbacks=[TimeBudget(100)], max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"also configures CosineAnnealingLR; remove the model's lr_scheduler"):
        trainer.fit(model, make_datamodule("mnist", tmp_path, batch_size=32, val_split=40))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(840, 840.0), (12.5, 12.5), ("840", 840.0), ("00:14:00", 840.0), ("00:00:14:00", 840.0), ("1:00:00:00", 86400.0)],
)
def test_durations_read_as_lightning_max_time_or_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -5, True, "abc", "14:00", "00:-1:00", "inf", float("nan"), float("inf")])
def test_a_bad_duration_is_a_one_line_error_naming_it(value):
    with pytest.raises(ValueError, match=r"^duration=.* is not a time budget; give seconds") as err:
        TimeBudget(value)
    assert "\n" not in str(err.value)


def test_the_cli_takes_the_budget_from_yaml_and_names_a_bad_one(tmp_path, capsys):
    # The record recipe plans in time as shipped; the trainer piece gives any other config the same budget.
    from lightning_cnn.cli import CNNCLI

    for extra in ([], ["--trainer", str(CONFIGS / "trainer" / "time_budget.yaml")]):
        base = ["fit", "--config", str(CONFIGS / "best_fashion_mnist.yaml"), *extra, "--print_config"]
        with pytest.raises(SystemExit):
            CNNCLI(args=base)
        printed = capsys.readouterr().out
        assert "class_path: lightning_cnn.callbacks.TimeBudget" in printed and "max_epochs: -1" in printed
        assert "duration: 00:13:45" in printed and "lr_scheduler: null" in printed
        assert "precision: auto" in printed
    line = cli_error_line(capsys, [*base[:-1], "--trainer.callbacks.duration", "soon"])
    assert "duration='soon' is not a time budget" in line


def test_the_record_config_runs_end_to_end_on_its_budget(in_tmp):
    # A budget of a millisecond is spent by the first training batch on any machine: that batch, its validation
    # and the test pass, through the CLI as the README gives the command (on fake Fashion-MNIST files).
    from lightning_cnn.cli import CNNCLI

    folder = write_fake_mnist(in_tmp / "fashion")
    cli = CNNCLI(args=["fit", "--config", str(CONFIGS / "best_fashion_mnist.yaml"),
                       "--trainer.callbacks.duration", "0.001", "--data.init_args.data_dir", str(folder),
                       "--data.init_args.download", "false", "--data.init_args.val_split", "20",
                       "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert cli.trainer.global_step == 1
    assert "test/acc" in cli.trainer.callback_metrics
    rows = list(csv.DictReader(Path(cli.trainer.log_dir, "metrics.csv").read_text().splitlines()))
    assert [row["step"] for row in rows if row.get("val/acc")] == ["0"]  # the one batch was validated
    assert list(Path(cli.trainer.log_dir, "checkpoints").glob("best-epoch00*.ckpt"))
