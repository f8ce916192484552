"""Shared fixtures. Real data lives in ../shared/data beside the repository (this project's CI has it; users,
and their CI, do not)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("SHARPDRO_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "SHA256SUMS").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with the shared real archives. Absent, its tests skip, in a user's CI too (``CI`` says nothing about
    ../shared); they fail where ``SHARPDRO_REQUIRE_SHARED_DATA=1`` (set by this project's .ci/run, which has it)."""
    path = _shared_data()
    if path is None:
        if os.environ.get("SHARPDRO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail("../shared/data is missing, and SHARPDRO_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip("../shared/data not present (real-data tests; set SHARPDRO_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def cifar10_folder(shared_data, tmp_path_factory) -> Path:
    """The shared CIFAR-10 JPEG archive extracted once per test session: <root>/{train,test}/<class>/*.jpg."""
    import tarfile

    out = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(shared_data / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(out, filter="data")
    # The archive may hold a single top folder; return the folder that holds train/ and test/.
    for cand in [out, *out.iterdir()]:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise AssertionError(f"no train/ and test/ in the CIFAR-10 archive: {list(out.iterdir())}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache from tests."""
    monkeypatch.setenv("SHARPDRO_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread (two threads on a busy 2-core machine spin-wait on each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_sweep_set() -> list[str]:
    """Overrides of the quickstart that make each job of a real tuning sweep take about a second."""
    return ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
            "train.epochs=1", "train.batch_size=40", "train.progress=false", "train.threads=1",
            "eval.batch_size=256"]


@pytest.fixture(scope="session")
def tiny_tune_sweep(tiny_sweep_set):
    """Runs a real tiny tuning sweep of the quickstart: ``run(root, tune, extra_set=(), **spec)`` writes the
    sweep file under ``root`` (``tiny_sweep_set`` + ``extra_set``; ``spec``: more top-level keys, e.g. grid),
    sweeps it with a dataset cache of its own, and returns the output folder."""
    import yaml

    from sharpdro.cli import main

    def run(root, tune: dict, extra_set=(), **spec) -> Path:
        root = Path(root)
        sweep = root / "tune.yaml"
        sweep.write_text(yaml.safe_dump({"base": "quickstart", "set": [*tiny_sweep_set, *extra_set], "tune": tune,
                                         **spec}))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SHARPDRO_CACHE", str(root / "cache"))
            assert main(["sweep", str(sweep), "--out", str(root / "out"), "--no-progress"]) == 0
        return root / "out"

    return run
