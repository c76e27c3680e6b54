"""``trainer.precision: auto``: bfloat16 where the hardware computes it natively, float32 elsewhere, chosen when the
trainer is built and said in one line. The CPU and GPU checks are replaced by stand-ins, so every branch is tested
on any machine; the real choice of the machine running the tests is tested too."""

from __future__ import annotations

import pytest
import torch
import yaml

import lightning_cnn.hardware as hardware
from lightning_cnn.cli import CNNCLI
from tests.conftest import CONFIGS, write_fake_mnist


def _cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(hardware, "_cpu_bf16_flags", lambda: ["avx512_bf16", "amx_bf16"] if native_bf16 else [])


def test_a_cpu_with_bfloat16_instructions_gets_bf16_mixed(monkeypatch):
    _cpu(monkeypatch, native_bf16=True)
    assert hardware.auto_precision("auto") == (
        "bf16-mixed",
        "this CPU has bfloat16 instructions (avx512_bf16, amx_bf16)",
    )
    assert hardware.auto_precision("cpu")[0] == "bf16-mixed"


def test_a_cpu_without_them_keeps_float32_and_says_why(monkeypatch):
    _cpu(monkeypatch, native_bf16=False)
    precision, why = hardware.auto_precision("cpu")
    assert precision == "32-true" and "no bfloat16 instructions (AVX512-BF16 or AMX)" in why


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_a_cuda_device_gets_bf16_only_where_it_supports_it(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA V100")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)  # the GPU decides, not the CPU
    for accelerator in ("auto", "gpu", "cuda"):
        precision, why = hardware.auto_precision(accelerator)
        assert precision == expected and why.startswith("NVIDIA V100")
    assert hardware.auto_precision("cpu")[0] == "bf16-mixed"  # accelerator cpu: the CPU decides


def test_other_accelerators_keep_float32():
    assert hardware.auto_precision("mps")[0] == "32-true"


def test_the_flags_named_are_the_cpus_own():
    flags = hardware._cpu_bf16_flags()
    assert set(flags) <= {"avx512_bf16", "amx_bf16"}
    if flags:  # a CPU that reports them is one oneDNN computes bfloat16 on
        assert hardware.cpu_has_native_bf16()


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_the_cli_runs_with_the_choice_says_it_once_and_saves_auto(monkeypatch, tmp_path, capsys, native_bf16, expected):
    _cpu(monkeypatch, native_bf16)
    monkeypatch.chdir(tmp_path)
    mnist = write_fake_mnist(tmp_path / "mnist")
    cli = CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--trainer",
                       str(CONFIGS / "trainer" / "smoke.yaml"), "--trainer.logger", "true",
                       "--trainer.default_root_dir", str(tmp_path / "run"), "--data.init_args.data_dir", str(mnist),
                       "--data.init_args.download", "false", "--trainer.precision", "auto"])  # fmt: skip
    assert cli.trainer.precision == expected
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision auto:")]
    assert lines == [f"precision auto: {expected} ({hardware.auto_precision('cpu')[1]})"]
    saved = yaml.safe_load(next((tmp_path / "run").rglob("config.yaml")).read_text())
    assert saved["trainer"]["precision"] == "auto"  # the run's config chooses again on the next machine


def test_a_precision_that_is_not_a_choice_is_still_refused(capsys):
    with pytest.raises(SystemExit):
        CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--trainer.precision", "fastest"])
    assert "trainer.precision" in capsys.readouterr().err
