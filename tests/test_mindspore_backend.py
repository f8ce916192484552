"""The MindSpore backend through the unchanged engine: run directory, resume, evaluation, conversion, bench.

Numerical equality with the PyTorch backend is in ``test_mindspore_parity.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest

try:  # skipped ONLY where MindSpore cannot be imported (CI installs it)
    import mindspore  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"mindspore is not importable ({type(exc).__name__}: {exc}); install it with "
                f"pip install 'sharpdro[mindspore]'", allow_module_level=True)

import torch

USER_ISA = os.environ.get("ONEDNN_MAX_CPU_ISA")  # before this package touches it

from sharpdro.backends.mindspore import _runtime, convert  # noqa: E402

_runtime.configure("cpu")

from sharpdro.backends.base import get_backend  # noqa: E402
from sharpdro.backends.mindspore.models import build_model  # noqa: E402
from sharpdro.backends.mindspore.bench import bench_train_step  # noqa: E402
from sharpdro.backends.mindspore.session import MindSporeSession  # noqa: E402
from sharpdro.config import load_config  # noqa: E402
from sharpdro.data.splits import build_splits  # noqa: E402
from sharpdro.engine import evaluate_run, train  # noqa: E402
from sharpdro.errors import TrainingError  # noqa: E402
from sharpdro.io import read_jsonl  # noqa: E402
from sharpdro.rundir import find_checkpoint  # noqa: E402

TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=2", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]


def tiny(*extra, backend="mindspore"):
    return load_config("quickstart", [*TINY, f"backend={backend}", *extra])


@pytest.fixture(scope="module")
def splits():
    return build_splits(tiny(), progress=False)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ----------------------------------------------------------------------------- engine
def test_run_directory_and_evaluation(tmp_path, splits):
    cfg = tiny("algorithm.name=groupdro")
    summary = train(cfg, out_dir=tmp_path / "run", splits=splits)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", "checkpoints/last.npz",
                 "checkpoints/best.npz"):
        assert (run / name).is_file(), name
    assert convert.checkpoint_backend(run / "checkpoints" / "last.npz") == "mindspore"
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert len(r["q"]) == 6 and abs(sum(r["q"]) - 1) < 1e-5
        assert set(r["test"]["accuracy"]) == {str(s) for s in range(6)}
    assert summary["backend"] == "mindspore"
    # evaluate / predict go through the backend named in config.yaml
    res = evaluate_run(run, progress=False)
    assert res["test"]["accuracy"] == summary["test_accuracy"]
    session, cfg2 = get_backend("mindspore").load_for_inference(run / "checkpoints" / "best.npz")
    assert cfg2["backend"] == "mindspore" and session.classes == list(splits.classes)
    logits = session.predict_logits(splits.test[0].images[:7], 4)
    assert logits.shape == (7, splits.num_classes) and logits.dtype == np.float32
    # a MindSpore run written before the .npz suffix (checkpoints named *.pt) stays readable
    for kind in ("last", "best"):
        (run / "checkpoints" / f"{kind}.npz").rename(run / "checkpoints" / f"{kind}.pt")
    assert find_checkpoint(run) == run / "checkpoints" / "best.pt"
    assert evaluate_run(run, progress=False)["test"]["accuracy"] == summary["test_accuracy"]


@pytest.mark.parametrize("algorithm", ["sharpdro", "jtt"])
def test_resume_equals_uninterrupted(tmp_path, splits, algorithm):
    cfg = tiny(f"algorithm.name={algorithm}", "algorithm.jtt_epochs=1", "model.dropout=0.2", "train.epochs=3")
    full = train(cfg, out_dir=tmp_path / "full", splits=splits)
    stop = tmp_path / "stopped"
    original = MindSporeSession.save_checkpoint

    def save_then_die(self, path, extra):
        original(self, path, extra)
        if extra["epoch"] == 1:
            raise KeyboardInterrupt

    MindSporeSession.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out_dir=stop, splits=splits)
    finally:
        MindSporeSession.save_checkpoint = original
    resumed = train(cfg, out_dir=stop, resume=True, splits=splits)
    a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(stop / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert resumed["test_accuracy"] == full["test_accuracy"]
    sa, _ = convert.read_checkpoint(tmp_path / "full" / "checkpoints" / "last.npz")
    sb, _ = convert.read_checkpoint(stop / "checkpoints" / "last.npz")
    assert set(sa) == set(sb)
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


def test_test_set_once_at_the_selected_epoch(tmp_path, splits):
    """eval.test=selected: the test set once, after training, with the selected epoch's weights (best.npz,
    removed afterwards with output.save_best=false); the same numbers as the eval.test=every run."""
    base = ("algorithm.name=erm", "train.epochs=3")
    every = train(tiny(*base), out_dir=tmp_path / "every", splits=splits)
    sel = train(tiny(*base, "eval.test=selected", "output.save_best=false"), out_dir=tmp_path / "sel", splits=splits)
    a, b = read_jsonl(tmp_path / "every" / "metrics.jsonl"), read_jsonl(tmp_path / "sel" / "metrics.jsonl")
    for ra, rb in zip(a, b):  # the same training and validation
        assert {k: v for k, v in ra.items() if k not in ("seconds", "test")} == \
            {k: v for k, v in rb.items() if k not in ("seconds", "test")}
    e = sel["selected_epoch"]
    assert e == every["selected_epoch"] < 2  # not the last epoch: the weights come from best.npz
    assert [("test" in r) for r in b] == [i == e for i in range(3)] and b[e]["test"] == a[e]["test"]
    assert sel["test_accuracy"] == every["test_accuracy"] and sel["test_worst"] == every["test_worst"]
    assert sel["selected_train_accuracy"] == b[e]["train"]["accuracy"]
    assert not (tmp_path / "sel" / "checkpoints" / "best.npz").exists()


def test_a_run_starts_from_the_torch_runs_initial_weights(splits):
    """Same config and seed -> the MindSpore session's initial state is the PyTorch session's, converted."""
    from sharpdro.backends.torch.session import TorchSession

    for name in ("eiil", "sharpdro"):
        cfg = tiny(f"algorithm.name={name}")
        ts = TorchSession({**cfg, "backend": "torch"}, splits)
        ms_s = MindSporeSession(cfg, splits)
        ref = convert.algorithm_state_to_mindspore(ts.algorithm.state_dict())
        mine = ms_s.algorithm.state_dict()
        assert set(ref) == set(mine)
        for k, v in ref.items():
            assert np.array_equal(mine[k], v), k
        assert ms_s.norm == ts.norm
        x_t, = ts.to_device(splits.train.images[:5])
        x_m, = ms_s.to_device(splits.train.images[:5])
        assert np.array_equal(x_m.asnumpy(), x_t.numpy())  # the same normalised input, bit for bit


# ----------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, splits):
    out = tmp_path_factory.mktemp("torch-run") / "run"
    train(tiny("algorithm.name=sharpdro", "train.epochs=1", backend="torch"), out_dir=out, splits=splits)
    return out


def test_torch_checkpoint_converts_to_mindspore_and_back(tmp_path, splits, torch_run):
    src = torch_run / "checkpoints" / "last.pt"
    images = splits.test[3].images[:32]
    t_session, _ = get_backend("torch").load_for_inference(src)
    ref = t_session.predict_logits(images, 16)

    ms_ckpt = convert.torch_to_mindspore(src, tmp_path / "ms.pt")
    assert convert.checkpoint_backend(ms_ckpt) == "mindspore"
    m_session, cfg = get_backend("mindspore").load_for_inference(ms_ckpt)
    assert cfg["backend"] == "mindspore"
    assert rel_err(m_session.predict_logits(images, 16), ref) <= 1e-5
    t_q = t_session.algorithm.q.numpy()
    assert np.array_equal(m_session.algorithm.buffers["q"], t_q) and not np.allclose(t_q, t_q[0])
    # on the fly: the MindSpore backend reads a PyTorch checkpoint directly
    direct, _ = get_backend("mindspore").load_for_inference(src)
    assert rel_err(direct.predict_logits(images, 16), ref) <= 1e-5
    # a full resume state (momentum, RNG): a MindSpore session loads it
    extra = m_session.load_checkpoint(ms_ckpt)
    assert extra == {"epoch": 0}

    back = convert.mindspore_to_torch(ms_ckpt, tmp_path / "back.pt")
    a = torch.load(src, weights_only=False)
    b = torch.load(back, weights_only=False)
    assert set(a["algorithm"]) == set(b["algorithm"])
    for k, v in a["algorithm"].items():
        assert torch.equal(b["algorithm"][k], v), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(b["optimizer"]["state"][i]["momentum_buffer"], st["momentum_buffer"])
    t2, _ = get_backend("torch").load_for_inference(back)
    t2.load_checkpoint(back)  # optimizer and RNG states load too
    assert np.array_equal(t2.predict_logits(images, 16), ref)


def test_mindspore_run_evaluates_on_torch(tmp_path, splits):
    run = tmp_path / "ms-run"
    summary = train(tiny("algorithm.name=jtt", "train.epochs=1"), out_dir=run, splits=splits)
    out = tmp_path / "torch.pt"
    from sharpdro.commands import convert as convert_command

    rc = convert_command.run(Namespace(src=str(run), out=str(out), to="auto"))  # the `sharpdro convert` entry point
    assert rc == 0 and convert.checkpoint_backend(out) == "torch"
    t_session, cfg = get_backend("torch").load_for_inference(out)
    assert cfg["backend"] == "torch"
    m_session, _ = get_backend("mindspore").load_for_inference(run / "checkpoints" / "best.npz")
    assert np.array_equal(t_session.algorithm.error_set.numpy(), m_session.algorithm.buffers["error_set"])
    images = splits.test[0].images
    assert rel_err(t_session.predict_logits(images, 128), m_session.predict_logits(images, 128)) <= 1e-5
    acc = float(np.mean(t_session.evaluate(images, splits.test[0].labels, 128)["correct"]))
    assert acc == pytest.approx(summary["test_accuracy"]["0"], abs=1.5 / len(images))


def test_cnn7_runs_on_both_backends_and_converts_both_ways(tmp_path, splits):
    """One epoch of cnn7 per backend, then `sharpdro convert` each run into the other backend's format:
    the converted checkpoint predicts what the original does, and the MindSpore run re-evaluates to its figures."""
    from sharpdro.commands import convert as convert_command

    images = splits.test[4].images[:64]
    for backend, other in (("torch", "mindspore"), ("mindspore", "torch")):
        run, out = tmp_path / backend, tmp_path / f"{backend}-as-{other}.{'npz' if other == 'mindspore' else 'pt'}"
        summary = train(tiny("model.name=cnn7", "train.epochs=1", backend=backend), out_dir=run, splits=splits)
        assert summary["backend"] == backend
        assert convert_command.run(Namespace(src=str(run), out=str(out), to="auto")) == 0
        assert convert.checkpoint_backend(out) == other
        source, _ = get_backend(backend).load_for_inference(find_checkpoint(run))
        converted, cfg = get_backend(other).load_for_inference(out)
        assert cfg["model"]["name"] == "cnn7" and cfg["backend"] == other
        assert rel_err(converted.predict_logits(images, 32), source.predict_logits(images, 32)) <= 1e-5
        if backend == "mindspore":
            assert evaluate_run(run, progress=False)["test"]["accuracy"] == summary["test_accuracy"]


def test_export_native_mindspore_ckpt(tmp_path, torch_run, splits):
    out = convert.export_mindspore_ckpt(torch_run / "checkpoints" / "last.pt", tmp_path / "net.ckpt")
    net = build_model("cnn", splits.num_classes, splits.image_shape[0], width=8, seed=None)
    not_loaded = mindspore.load_param_into_net(net, mindspore.load_checkpoint(str(out)))
    assert not any(not_loaded) if isinstance(not_loaded, tuple) else not not_loaded
    net.set_train(False)
    t_session, _ = get_backend("torch").load_for_inference(torch_run / "checkpoints" / "last.pt")
    images = splits.test[2].images[:16]
    (x,) = t_session.to_device(images)
    with torch.no_grad():
        ref = t_session.algorithm.model.eval()(x).numpy()
    assert rel_err(net(mindspore.Tensor(x.numpy())).asnumpy(), ref) <= 1e-5
    with pytest.raises(TrainingError, match=".ckpt"):
        convert.export_mindspore_ckpt(torch_run / "checkpoints" / "last.pt", tmp_path / "net.bin")


def test_checkpoint_errors_are_clear(tmp_path, torch_run, splits):
    session = MindSporeSession(tiny(), splits)
    with pytest.raises(TrainingError, match="PyTorch backend; convert it"):
        session.load_checkpoint(torch_run / "checkpoints" / "last.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot be read"):
        session.load_checkpoint(bad)
    with pytest.raises(TrainingError, match="does not exist"):
        session.load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- settings and errors
def test_unsupported_settings_are_refused(splits):
    with pytest.raises(TrainingError, match="fp32 only"):
        MindSporeSession(tiny("train.precision=bf16"), splits)
    with pytest.raises(TrainingError, match="not available with backend=mindspore"):
        MindSporeSession(tiny("train.device=mps"), splits)
    assert get_backend("mindspore").requires_groups(tiny("algorithm.name=sharpdro"))
    assert not get_backend("mindspore").requires_groups(tiny("algorithm.name=sharpdro_agnostic"))


def test_runtime_settings_and_environment():
    info = _runtime.configure("cpu")
    assert info["mode"] == "pynative" and info["target"] == "CPU" and info["threads"] >= 1
    assert mindspore.get_context("mode") == mindspore.PYNATIVE_MODE
    # the oneDNN setting was applied for MindSpore and taken out of the environment again
    assert os.environ.get("ONEDNN_MAX_CPU_ISA") == USER_ISA


def test_convert_works_and_backend_refuses_cleanly_without_mindspore():
    code = (
        "import sys; sys.modules['mindspore'] = None\n"
        "from sharpdro.backends.mindspore import convert\n"
        "assert convert.mindspore_name('a.bn.weight', {'a.bn'}) == 'a.bn.gamma'\n"
        "from sharpdro.backends.base import get_backend\n"
        "from sharpdro.errors import SharpDROError\n"
        "try:\n"
        "    get_backend('mindspore')\n"
        "except SharpDROError as exc:\n"
        "    assert \"pip install 'sharpdro[mindspore]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_bench_train_step():
    cfg = load_config("quickstart", ["backend=mindspore", "model.width=8", "algorithm.name=sharpdro",
                                     "train.progress=false"])
    out = bench_train_step(cfg, steps=2, batch_size=16)
    assert out["backend"] == "mindspore" and out["steps"] == 2 and out["batch_size"] == 16
    assert out["step_seconds_median"] > 0 and out["images_per_second"] > 0 and out["peak_memory_mb"] > 0


def test_quickstart_prints_the_same_table(tmp_path, capsys):
    from sharpdro.cli import main

    rc = main(["quickstart", "--set", "backend=mindspore", *[a for s in TINY for a in ("--set", s)],
               "--set", "train.epochs=1", "--out", str(tmp_path / "qs")])
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("severity"))
    assert lines[header].split() == ["severity", "erm", "sharpdro"]
    assert [line.split()[0] for line in lines[header + 1:header + 9]] == [*map(str, range(6)), "average", "worst"]


@pytest.mark.parametrize("name", ["groupdro", "sharpdro"])
def test_group_id_out_of_range_is_an_error_in_mindspore(name):
    """As the torch steps (tests/test_public_api.py): one error naming the id and num_groups, not a silent drop."""
    from mindspore import nn as ms_nn

    from sharpdro.backends.mindspore.algorithms import build_algorithm as ms_build
    from sharpdro.data.groups import GroupIdError

    model = build_model("cnn", 3, 8, width=4)
    algo = ms_build(name, model, 3, 4, {}, 6)
    algo.configure(ms_nn.SGD(model.trainable_params(), learning_rate=0.1))
    x = mindspore.Tensor(np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32))
    y = mindspore.Tensor(np.array([0, 1, 2, 0, 1, 2], dtype=np.int64))
    g = mindspore.Tensor(np.array([0, 1, 4, 0, 1, 2], dtype=np.int64))
    with pytest.raises(GroupIdError, match=r"group id 4 is outside \[0, 4\) \(num_groups=4"):
        algo.update(x, y, g, mindspore.Tensor(np.arange(6, dtype=np.int64)))
