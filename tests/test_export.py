"""Shareable models: export -> load_pretrained gives the run's logits; model.init_from fine-tunes from an export."""
import json

import numpy as np
import pytest
import torch

from sharpdro import load_pretrained
from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.data.splits import build_splits
from sharpdro.engine import evaluate_run, train
from sharpdro.export import ExportError, export_run, read_export_config
from sharpdro.rundir import RunDir

TINY = ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5", "model.width=8",
        "train.epochs=2", "train.batch_size=50", "train.progress=false", "train.threads=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    train(load_config("quickstart", TINY + ["model.dropout=0.1"]), out_dir=d)
    return d


def test_export_and_load_back_gives_the_runs_logits(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed
    # the screen counts epochs from 1, the files from 0 (README); this printed the 0-based index before
    assert f", epoch {RunDir(run_dir).read_summary()['selected_epoch'] + 1}," in printed, printed
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    summary = RunDir(run_dir).read_summary()
    assert meta["config_hash"] == summary["config_hash"] and meta["selected_epoch"] == summary["selected_epoch"]
    size = load_config("quickstart", TINY)["data"]["image_size"]
    assert meta["architecture"] == {"name": "cnn", "width": 8, "dropout": 0.1, "num_classes": 10, "image_size": size}
    assert meta["classes"] == [str(i) for i in range(10)] and len(meta["normalization"]["mean"]) == 3

    model = load_pretrained(out)
    assert isinstance(model, torch.nn.Module) and not model.training
    from sharpdro.backends.torch import BACKEND

    session, cfg = BACKEND.load_for_inference(RunDir(run_dir).best)
    test = build_splits(cfg, progress=False).test
    images = np.concatenate([test[s].images for s in (0, 3, 5)])
    ours = session.predict_logits(images, 64)
    with torch.no_grad():
        theirs = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    # and the accuracy of the run's own evaluation
    res = evaluate_run(run_dir, progress=False)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(test[5].images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
                     == test[5].labels).mean())
    assert acc == pytest.approx(res["test"]["accuracy"]["5"])


def test_exported_weights_are_plain_tensors(run_dir, tmp_path):
    from safetensors import safe_open

    export_run(RunDir(run_dir).last, tmp_path / "e")
    with safe_open(str(tmp_path / "e" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(not k.startswith("model.") for k in keys)  # the network alone, not the algorithm
    assert read_export_config(tmp_path / "e")["selected_epoch"] == 1  # last.pt: the last epoch
    with pytest.raises(ExportError, match="not a sharpdro export"):
        read_export_config(tmp_path)


def test_init_from_starts_from_the_exported_weights(run_dir, tmp_path):
    out = export_run(run_dir, tmp_path / "e")
    exported = load_pretrained(out).net.state_dict()
    cfg = load_config("quickstart", TINY + [f"model.init_from={out}", "model.dropout=0.1"])
    splits = build_splits(cfg, progress=False)
    from sharpdro.backends.torch.session import TorchSession

    model = TorchSession(cfg, splits).algorithm.model
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), exported[k]), k
    # a dataset with other classes: everything but the classifier
    cfg5 = load_config("quickstart", TINY + [f"model.init_from={out}"])
    from sharpdro.backends.torch.models import build_model
    from sharpdro.export import _classifier_keys, init_from_pretrained

    fresh = build_model("cnn", 5, 16, width=8)
    head = _classifier_keys(fresh)
    with pytest.warns(UserWarning, match="classifier"):
        net = init_from_pretrained(fresh, out, cfg5["model"], 5, 16)
    state = net.state_dict()
    assert head and all(state[k].shape[0] == 5 for k in head)
    for k, v in exported.items():
        if k not in head:
            assert torch.equal(state[k], v), k
    with pytest.raises(ExportError, match="model.width"):
        TorchSession(load_config("quickstart", TINY + [f"model.init_from={out}", "model.width=16"]), splits)
    # a run trains from it end to end
    summary = train(cfg, out_dir=tmp_path / "finetuned", splits=splits)
    assert summary["finished"]


def test_init_from_with_the_mindspore_backend(run_dir, tmp_path):
    pytest.importorskip("mindspore")
    from sharpdro.backends.mindspore import convert
    from sharpdro.backends.mindspore.models import parameter_dict
    from sharpdro.backends.mindspore.session import MindSporeSession

    out = export_run(run_dir, tmp_path / "e")
    cfg = load_config("quickstart", TINY + [f"model.init_from={out}", "backend=mindspore"])
    session = MindSporeSession(cfg, build_splits(cfg, progress=False))
    expected = convert.torch_state_to_mindspore(load_pretrained(out).net.state_dict())
    got = {k: v.asnumpy() for k, v in parameter_dict(session.algorithm.model).items()}
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v)
