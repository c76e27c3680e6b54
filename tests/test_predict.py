"""``cli.py predict`` and ``predict_images``: files that land somewhere, in input order, with the training
preprocessing applied to new images — checked against the predictions on the test split itself."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cnn import ImageClassifier
from lightning_cnn.cli import CNNCLI, main
from lightning_cnn.data.mnist import read_idx
from lightning_cnn.predict import PredictionTable, predict_images
from tests.conftest import CONFIGS, write_fake_mnist

CONFIG = CONFIGS / "lenet_mnist.yaml"
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]
QUIET = ["--trainer.enable_progress_bar", "false"]
# An odd number of test images: a 2-process run splits them unevenly (31 + 30).
N_TEST = 61


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LeNet trained for a few batches on fake MNIST (IDX files), in its own working folder."""
    root = tmp_path_factory.mktemp("trained")
    data_dir = write_fake_mnist(root / "mnist", n_train=240, n_test=N_TEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        data = ["--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false"]
        cli = CNNCLI(args=["fit", "--config", str(CONFIG), *SMOKE, *data, "--test_after_fit", "false"])
        ckpt = Path(cli.trainer.log_dir).resolve() / "checkpoints" / "last.ckpt"
    return {"root": root, "data_dir": data_dir, "ckpt": ckpt}


def predict(cwd: Path, *args: str) -> CNNCLI:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        return CNNCLI(args=["predict", *args, *QUIET])


def written(cli: CNNCLI, cwd: Path) -> tuple[list[dict[str, str]], np.ndarray]:
    writer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "PredictionWriter")
    table, array = writer.written
    return read_rows(cwd / table), np.load(cwd / array)


def split_probabilities(trained) -> np.ndarray:
    """Reference: the model applied to the test split as the datamodule prepares it for training."""
    from lightning_cnn.data import MNISTDataModule

    model = ImageClassifier.load_from_checkpoint(trained["ckpt"]).eval()
    dm = MNISTDataModule(data_dir=str(trained["data_dir"]), download=False)
    dm.setup()
    x, _ = dm.test_set[list(range(len(dm.test_set)))]
    with torch.no_grad():
        return model.probabilities(model(x)).numpy()


def test_predict_on_the_test_split_writes_one_row_per_image_in_a_new_run_folder(trained, tmp_path, capsys):
    data = ["--data.init_args.data_dir", str(trained["data_dir"]), "--data.init_args.download", "false"]
    cli = predict(tmp_path, "--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), *data)
    rows, probabilities = written(cli, tmp_path)
    out = capsys.readouterr().out
    run = Path(cli.trainer.log_dir)
    assert f"Saved predictions of {N_TEST} images: {run / 'predictions.csv'}" in out
    assert f"Saved class probabilities: {run / 'probabilities.npy'}" in out
    run = tmp_path / run
    assert probabilities.shape == (N_TEST, 10)
    np.testing.assert_allclose(probabilities, split_probabilities(trained), atol=1e-6)

    labels = read_idx(trained["data_dir"] / "t10k-labels-idx1-ubyte.gz")
    names = [str(d) for d in range(10)]
    assert [r["id"] for r in rows] == [str(i) for i in range(N_TEST)]
    assert [r["label"] for r in rows] == [names[v] for v in labels]
    assert [r["prediction"] for r in rows] == [names[i] for i in probabilities.argmax(1)]
    assert list(rows[0]) == ["id", "label", "prediction", "probability", "top1", "top1_probability", "top2",
                             "top2_probability", "top3", "top3_probability"]  # fmt: skip
    first = rows[0]
    top = np.sort(probabilities[0])[::-1]
    assert [float(first[f"top{k}_probability"]) for k in (1, 2, 3)] == pytest.approx(top[:3], abs=1e-6)
    assert float(first["probability"]) == pytest.approx(top[0], abs=1e-6)

    # A second prediction goes into another folder; the first one's files stay as they were.
    before = (run / "predictions.csv").read_bytes()
    again = predict(tmp_path, "--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), *data)
    assert tmp_path / again.trainer.log_dir != run and (run / "predictions.csv").read_bytes() == before


def test_predict_needs_only_the_checkpoint(trained, tmp_path):
    cli = predict(tmp_path, "--ckpt_path", str(trained["ckpt"]), "--predictions.top_k", "5")
    rows, probabilities = written(cli, tmp_path)
    assert Path(cli.trainer.log_dir) == Path("runs") / "predict" / "version_0"
    np.testing.assert_allclose(probabilities, split_probabilities(trained), atol=1e-6)
    assert "top5" in rows[0] and "top6" not in rows[0]


def _test_images(trained) -> np.ndarray:
    return read_idx(trained["data_dir"] / "t10k-images-idx3-ubyte.gz")


def test_new_images_get_the_training_preprocessing(trained, tmp_path, capsys):
    """PNG files of test images (nested folders, one RGB, one broken file) predict exactly like the test split."""
    images = _test_images(trained)
    folder = tmp_path / "photos"
    (folder / "nested" / "deeper").mkdir(parents=True)
    paths = {0: folder / "a.png", 3: folder / "nested" / "b.PNG", 7: folder / "nested" / "deeper" / "c.bmp"}
    for index, path in paths.items():
        Image.fromarray(images[index]).save(path)
    Image.fromarray(images[5]).convert("RGB").save(folder / "rgb.png")  # read back as grayscale: same pixels
    paths[5] = folder / "rgb.png"
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")

    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not readable images: .*broken\.jpg"):
        cli = predict(tmp_path, "--ckpt_path", str(trained["ckpt"]), "--inputs", str(folder))
    rows, probabilities = written(cli, tmp_path)
    reference = split_probabilities(trained)
    by_path = {r["id"]: i for i, r in enumerate(rows)}
    assert sorted(by_path) == sorted(str(p) for p in paths.values())
    assert "label" not in rows[0]
    for index, path in paths.items():
        np.testing.assert_allclose(probabilities[by_path[str(path)]], reference[index], atol=1e-6)

    # One image file, and an .npy array (N, H, W) and (N, H, W, 1).
    single = predict(tmp_path, "--ckpt_path", str(trained["ckpt"]), "--inputs", str(paths[3]))
    rows, probabilities = written(single, tmp_path)
    assert [r["id"] for r in rows] == [str(paths[3])]
    np.testing.assert_allclose(probabilities[0], reference[3], atol=1e-6)
    for array in (images[:10], images[:10, ..., None]):
        np.save(tmp_path / "batch.npy", array)
        cli = predict(tmp_path, "--ckpt_path", str(trained["ckpt"]), "--inputs", str(tmp_path / "batch.npy"))
        rows, probabilities = written(cli, tmp_path)
        assert [r["id"] for r in rows] == [str(i) for i in range(10)]
        np.testing.assert_allclose(probabilities, reference[:10], atol=1e-6)


def test_predict_images_api_matches_the_cli(trained, tmp_path):
    images = _test_images(trained)
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i]).resize((56, 56)).save(files[-1])  # another size: resized like training data
    table = predict_images(trained["ckpt"], files)
    assert isinstance(table, PredictionTable) and len(table) == 4
    cli = predict(tmp_path, "--ckpt_path", str(trained["ckpt"]), "--inputs", str(tmp_path))
    cli_rows, cli_probabilities = written(cli, tmp_path)
    np.testing.assert_allclose(table.probabilities, cli_probabilities, atol=1e-6)
    assert [r["prediction"] for r in table.rows()] == [r["prediction"] for r in cli_rows]
    paths = table.write(tmp_path / "out")
    assert [p.name for p in paths] == ["predictions.csv", "probabilities.npy"]
    assert [p.name for p in table.write(tmp_path / "out")] == ["predictions_1.csv", "probabilities_1.npy"]


@pytest.mark.parametrize(
    "make_input,message",
    [
        (lambda d: d / "missing", "missing does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no image files"),
        (lambda d: np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object)) or d / "obj.npy", "not a plain .npy"),
        (lambda d: np.save(d / "f.npy", np.zeros((2, 28, 28), np.float32)) or d / "f.npy", "give uint8"),
    ],
)
def test_bad_inputs_end_with_one_error_line(trained, tmp_path, capsys, monkeypatch, make_input, message):
    inputs = make_input(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(trained["ckpt"]), "--inputs", str(inputs)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.multiprocess
def test_two_process_predict_writes_the_same_files_as_one_process(trained, tmp_path):
    from tests.test_ddp import run_cli

    data = ["--data.init_args.data_dir", str(trained["data_dir"]), "--data.init_args.download", "false"]
    predict_args = ["predict", "--config", str(CONFIG), "--ckpt_path", str(trained["ckpt"]), *data, *QUIET]
    run_cli(tmp_path / "one", *predict_args, "--trainer.devices", "1")
    run_cli(tmp_path / "two", *predict_args, "--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml"))

    outputs = {}
    for name in ("one", "two"):
        tables = list((tmp_path / name / "runs").rglob("predictions.csv"))
        assert len(tables) == 1, tables  # written once, by rank 0
        outputs[name] = (read_rows(tables[0]), np.load(tables[0].with_name("probabilities.npy")))
    (rows_one, p_one), (rows_two, p_two) = outputs["one"], outputs["two"]
    assert [r["id"] for r in rows_two] == [str(i) for i in range(N_TEST)]  # every image once, in input order
    # The same model on the same images; only the batch split differs (float summation order).
    np.testing.assert_allclose(p_two, p_one, atol=1e-6)
    text = ("id", "label", "prediction", "top1", "top2", "top3")
    assert [[r[k] for k in text] for r in rows_two] == [[r[k] for k in text] for r in rows_one]
