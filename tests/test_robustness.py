"""The standard corruption benchmark on real files: CIFAR-10-C (all 15 types + extras) and the ImageNet-C layout."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.engine import train
from sharpdro.robustness import (EXTRA, STANDARD, CifarC, evaluate_model, evaluate_predict, format_table,
                                 module_predict)
from sharpdro.rundir import RunDir

N = 10  # images per severity: files of 5 x 10 images (every CIFAR-10 label present, as in the real files)


def cifar10_named_folders(root, train_per_class=40, test_per_class=6, seed=0):
    """Tiny random 32x32 images in class folders named as CIFAR-10's classes (what CIFAR-10-C files fit)."""
    from sharpdro.data.match import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in CIFAR10_CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def tiny_run(path, cifar10_names: bool = True):
    """A 1-epoch run at 32 px: on CIFAR-10-named class folders (what CIFAR-10-C files fit), or on the digits."""
    data = []
    if cifar10_names:
        root = cifar10_named_folders(path.parent / f"{path.name}-folders")
        data = ["data.dataset=folder", f"data.root={root}"]
    cfg = load_config("quickstart", [*data, "data.image_size=32", "data.train_per_class=30", "data.val_per_class=3",
                                     "data.test_per_class=5", "model.width=8", "train.epochs=1",
                                     "train.batch_size=50", "train.progress=false", "train.threads=1"])
    train(cfg, out_dir=path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("bench") / "run")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("digits") / "run", cifar10_names=False)


def write_cifar_c(folder, types, n=N, seed=0, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for c in types:
        np.save(folder / f"{c}.npy", rng.integers(0, 256, (5 * n, size, size, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(rng.permutation(np.arange(n) % 10), 5).astype(np.int64))
    return folder


def test_cifar_c_folder_with_all_15_types_end_to_end(run_dir, tmp_path, capsys):
    folder = write_cifar_c(tmp_path / "CIFAR-10-C", STANDARD + ("speckle_noise",))
    (folder / "notes.npy").write_bytes(b"")  # an unknown file is listed, not evaluated
    assert main(["evaluate", str(run_dir), "--cifar-c", str(folder)]) == 0
    out = capsys.readouterr().out
    for c in STANDARD:
        assert c in out
    assert "mean corruption accuracy (15/15 standard types)" in out and "clean accuracy" in out
    files = [p for p in RunDir(run_dir).evaluations() if "cifar-c" in p.name]
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    assert list(res["corruptions"]) == list(STANDARD) + ["speckle_noise"]
    assert res["ignored_files"] == ["notes"]
    assert res["corruptions"]["speckle_noise"]["category"] == "extra"
    assert res["corruptions"]["fog"]["category"] == "weather"
    for entry in res["corruptions"].values():
        assert set(entry["severity"]) == {"1", "2", "3", "4", "5"}
        assert all(v["count"] == N for v in entry["severity"].values())
        assert entry["accuracy"] == pytest.approx(np.mean([v["accuracy"] for v in entry["severity"].values()]))
    mca = np.mean([res["corruptions"][c]["accuracy"] for c in STANDARD])
    assert res["mean_corruption_accuracy"] == pytest.approx(mca)
    assert res["mean_corruption_accuracy_extra"] == pytest.approx(res["corruptions"]["speckle_noise"]["accuracy"])
    assert res["categories"]["noise"] == pytest.approx(
        np.mean([res["corruptions"][c]["accuracy"] for c in ("gaussian_noise", "shot_noise", "impulse_noise")]))
    assert res["clean"]["count"] == 50  # the run's own test split at severity 0 (5 per class)

    # one cell against a direct computation with the run's model
    from sharpdro.backends.torch import BACKEND

    session, _ = BACKEND.load_for_inference(RunDir(run_dir).best)
    images = np.load(folder / "motion_blur.npy")[2 * N:3 * N]
    labels = np.load(folder / "labels.npy")[2 * N:3 * N]
    acc = float(np.mean(session.predict_logits(images, 64).argmax(1) == labels))
    assert res["corruptions"]["motion_blur"]["severity"]["3"]["accuracy"] == pytest.approx(acc)
    for key in ("ece", "nll", "brier"):
        assert key in res["corruptions"]["motion_blur"]["severity"]["3"]


def test_mce_against_a_reference_run(run_dir, tmp_path, capsys):
    folder = write_cifar_c(tmp_path / "c", ("gaussian_noise", "fog", "saturate"))
    other = tiny_run(tmp_path / "other")
    out = tmp_path / "res.json"
    assert main(["evaluate", str(other), "--cifar-c", str(folder), "--reference", str(run_dir),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "mCE" in capsys.readouterr().out
    ref = json.loads(next(p for p in RunDir(run_dir).evaluations() if p.name.endswith(res["tag"] + ".json")).read_text())
    for c in ("gaussian_noise", "fog", "saturate"):
        err = sum(1 - v["accuracy"] for v in res["corruptions"][c]["severity"].values())
        ref_err = sum(1 - v["accuracy"] for v in ref["corruptions"][c]["severity"].values())
        assert res["corruption_error"][c] == pytest.approx(err / ref_err)
    assert res["mce"] == pytest.approx(np.mean([res["corruption_error"][c] for c in ("gaussian_noise", "fog")]))
    # against itself: every CE is 1
    again = tmp_path / "self.json"
    assert main(["evaluate", str(run_dir), "--cifar-c", str(folder), "--reference", str(run_dir),
                 "--json", str(again), "--no-clean"]) == 0
    assert json.loads(again.read_text())["mce"] == pytest.approx(1.0)


def write_imagenet_c(root, corruptions, classes, per_class=2, size=40):
    rng = np.random.default_rng(3)
    for c in corruptions:
        for s in range(1, 6):
            for cls in classes:
                d = root / c / str(s) / cls
                d.mkdir(parents=True)
                for i in range(per_class):
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"img{i}.JPEG")
    return root


def test_imagenet_c_layout_end_to_end(digits_run, tmp_path):
    root = write_imagenet_c(tmp_path / "ImageNet-C", ("gaussian_noise", "frost", "spatter"), ["1", "3", "7", "cat"])
    out = tmp_path / "inc.json"
    assert main(["evaluate", str(digits_run), "--imagenet-c", str(root), "--json", str(out), "--no-clean"]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "imagenet-c" and list(res["corruptions"]) == ["gaussian_noise", "frost", "spatter"]
    assert res["skipped_classes"] == ["cat"]  # not one of the model's classes
    assert all(v["count"] == 6 for v in res["corruptions"]["frost"]["severity"].values())
    assert res["standard_types"] == 2 and "spatter" not in res["categories"]

    # the same through the generic function, with the model taking [0, 1] images and the folder resized to 32
    from sharpdro.backends.torch import BACKEND
    from sharpdro.data.sources import decode_images

    session, _ = BACKEND.load_for_inference(RunDir(digits_run).best)
    files = sorted((root / "frost" / "2" / "3").iterdir())
    images = decode_images(files, 32, progress=False)
    acc = float(np.mean(session.predict_logits(images, 64).argmax(1) == 3))
    per_class = res["corruptions"]["frost"]["severity"]["2"]
    assert 0.0 <= per_class["accuracy"] <= 1.0
    sub = evaluate_predict(lambda x: session.predict_logits(x, 64),
                           __import__("sharpdro.robustness", fromlist=["ImageNetC"]).ImageNetC(
                               root, session.classes, 32), corruptions=["frost"], severities=[2], progress=False)
    assert sub["corruptions"]["frost"]["severity"]["2"] == per_class
    assert acc in (0.0, 0.5, 1.0)


class _Linear(torch.nn.Module):
    """A toy [0, 1]-input model: mean colour -> 10 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3, 10)

    def forward(self, x):
        assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        return self.fc(x.mean(dim=(2, 3)))


def test_any_torch_module_goes_through_the_same_table(tmp_path):
    folder = write_cifar_c(tmp_path / "c", ("shot_noise", "contrast"), n=6)
    model = _Linear()
    rng = np.random.default_rng(5)
    clean = (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8))
    res = evaluate_model(model, cifar_c=folder, clean=clean, progress=False)
    images, labels = np.load(folder / "contrast.npy"), np.load(folder / "labels.npy")
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
    pred = logits.argmax(1)
    for s in range(1, 6):
        sl = slice((s - 1) * 6, s * 6)
        assert res["corruptions"]["contrast"]["severity"][str(s)]["accuracy"] == pytest.approx(
            np.mean(pred[sl] == labels[sl]))
    assert res["clean"]["count"] == 8 and res["model"] == "_Linear"
    assert "contrast" in format_table(res)
    predict = module_predict(model, batch_size=5)
    assert predict(images[:7]).shape == (7, 10)


def test_folder_errors(tmp_path):
    from sharpdro.errors import DataError

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="labels.npy"):
        CifarC(tmp_path / "empty")
    folder = write_cifar_c(tmp_path / "c", ("fog",))
    with pytest.raises(DataError, match="not in"):
        evaluate_predict(lambda x: np.zeros((len(x), 10)), CifarC(folder), corruptions=["snow"], progress=False)
    with pytest.raises(DataError, match="model takes"):
        CifarC(folder, image_shape=(64, 64, 3)).load("fog", 1)
    assert set(EXTRA) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"} and len(STANDARD) == 15
