"""Issue 28, item 4: model.name timm:NAME / module.path:factory, train.optimizer adamw, train.warmup_epochs."""
from __future__ import annotations

import copy
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.models import build_model
from sharpdro.backends.torch.session import TorchSession, make_optimizer
from sharpdro.config import ConfigError, default_config, load_config, validate
from sharpdro.schedule import lr_at

HERE = Path(__file__).resolve().parent
TINY = ["data.image_size=16", "data.train_per_class=40", "data.val_per_class=3", "data.test_per_class=5",
        "train.epochs=1", "train.batch_size=50", "train.progress=false", "train.threads=1", "train.precision=fp32",
        "eval.batch_size=256"]


@pytest.fixture
def factories(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import factory_models

    factory_models.CALLS.clear()
    return factory_models


def _cfg(*sets, backend=None):
    cfg = load_config(None, list(sets))
    return cfg if backend is None else validate({**cfg, "backend": backend})


# ------------------------------------------------------------------------------------------ config
def test_new_keys_default_to_todays_behaviour():
    cfg = default_config()
    assert cfg["train"]["optimizer"] == "sgd" and cfg["train"]["warmup_epochs"] == 0
    assert cfg["model"]["pretrained"] is False


def test_new_keys_at_their_defaults_leave_the_job_identity_alone():
    from sharpdro.experiments.sweep_spec import job_identity

    base = load_config("quickstart", ["train.lr=0.07"])
    assert job_identity(base) == job_identity(_cfg_without_new_keys(base))
    ident = job_identity(load_config("quickstart", ["train.lr=0.07", "train.optimizer=adamw",
                                                     "train.warmup_epochs=2"]))
    assert ident["train"]["optimizer"] == "adamw" and ident["train"]["warmup_epochs"] == 2


def _cfg_without_new_keys(cfg):
    out = copy.deepcopy(cfg)
    del out["train"]["optimizer"], out["train"]["warmup_epochs"], out["model"]["pretrained"]
    return out


@pytest.mark.parametrize("name", ["cnn7", "timm:resnet18", "timm:vit_tiny_patch16_224.augreg_in21k",
                                  "my_models:make_net", "pkg.sub.mod:Factory.build"])
def test_model_names_accepted(name):
    assert _cfg(f"model.name={name}")["model"]["name"] == name


@pytest.mark.parametrize("name", ["resnet", "timm:", "timm:a b", "mod:", ":make", "a b:c", "a:b:c", "1mod:f",
                                  "mod:f-g"])
def test_bad_model_names_are_one_clear_error(name):
    with pytest.raises(ConfigError, match=r"model\.name.*timm:NAME.*module\.path:factory"):
        validate({"model": {"name": name}})


@pytest.mark.parametrize("sets,match", [
    (["model.pretrained=true"], "for timm:NAME models only"),
    (["model.name=timm:resnet18", "model.pretrained=true", "model.init_from=/x"], "choose one"),
    (["train.optimizer=adamw", "train.nesterov=true"], "no Nesterov"),
    (["train.optimizer=adam"], "allowed: one of 'sgd', 'adamw'"),
    (["train.warmup_epochs=-1"], "out of range"),
])
def test_contradictions_are_one_clear_error(sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*sets)


@pytest.mark.parametrize("sets,match", [(["train.optimizer=adamw"], "MindSpore backend has SGD only"),
                                        (["model.name=my_models:make_net"], "PyTorch module"),
                                        (["model.name=timm:resnet18"], "PyTorch module")])
def test_mindspore_refuses_what_it_does_not_have(sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*sets, backend="mindspore")
    _cfg(*sets, backend="torch")


# ------------------------------------------------------------------------------------------ warm-up
def _sched(schedule, warmup, epochs=10, lr=0.1):
    return _cfg(f"train.schedule={schedule}", f"train.warmup_epochs={warmup}", f"train.epochs={epochs}",
                f"train.lr={lr}")


def test_warmup_constant_is_a_linear_ramp_to_lr():
    cfg = _sched("constant", 3)
    assert [lr_at(e, cfg) for e in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_warmup_times_cosine():
    cfg = _sched("cosine", 2)
    cos = [0.05 * (1 + math.cos(math.pi * e / 10)) for e in range(10)]
    want = [cos[0] * 1 / 3, cos[1] * 2 / 3] + cos[2:]
    assert [lr_at(e, cfg) for e in range(10)] == pytest.approx(want, rel=1e-12)
    assert lr_at(5, cfg) == pytest.approx(0.05)


def test_warmup_then_step_schedule():
    cfg = _sched("step", 2)  # milestones 0.3 / 0.6 / 0.8 of 10 epochs, gamma 0.2
    want = [0.1 / 3, 0.2 / 3, 0.1, 0.02, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]
    assert [lr_at(e, cfg) for e in range(10)] == pytest.approx(want, rel=1e-12)


def test_no_warmup_is_the_schedule_unchanged():
    for schedule in ("step", "cosine", "constant"):
        with_key = _sched(schedule, 0)
        without = copy.deepcopy(with_key)
        del without["train"]["warmup_epochs"]
        assert [lr_at(e, with_key) for e in range(10)] == [lr_at(e, without) for e in range(10)]


def test_warmup_in_a_training_run(tmp_path):
    from sharpdro.engine import train
    from sharpdro.io import read_jsonl

    cfg = load_config("quickstart", [*TINY, "model.width=8", "train.epochs=3", "train.schedule=constant",
                                     "train.warmup_epochs=2", "train.lr=0.06", "train.optimizer=adamw"])
    train(cfg, out_dir=tmp_path / "r")
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")]
    assert lrs == pytest.approx([0.02, 0.04, 0.06])
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    opt = state["optimizer"]
    assert "exp_avg_sq" in next(iter(opt["state"].values()))  # AdamW's state, not SGD's momentum
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999) and opt["param_groups"][0]["lr"] == pytest.approx(0.06)


# ------------------------------------------------------------------------------------------ AdamW
N, CLASSES, GROUPS, SIZE = 12, 4, 3, 8


def _session(*sets):
    cfg = _cfg("model.width=8", "train.precision=fp32", "train.device=cpu", "train.lr=0.01",
               "train.weight_decay=0.05", *sets)
    torch.manual_seed(0)
    s = TorchSession(cfg, None, norm=([0.5] * 3, [0.25] * 3), num_classes=CLASSES, image_shape=(SIZE, SIZE, 3),
                     num_groups=GROUPS, train_size=N)
    s.algorithm.mark_prepared()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(N, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (N,), generator=g),
             torch.arange(N) % GROUPS, torch.arange(N))
    return s, batch


def test_sgd_stays_the_default_optimizer():
    s, _ = _session()
    opt = s.optimizer
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 0.05


def test_adamw_first_erm_step_is_torchs_adamw():
    s, (x, y, g, idx) = _session("train.optimizer=adamw", "algorithm.name=erm")
    assert type(s.optimizer) is torch.optim.AdamW
    assert s.optimizer.defaults["betas"] == (0.9, 0.999) and s.optimizer.defaults["weight_decay"] == 0.05
    ref = copy.deepcopy(s.algorithm.model).train()
    before = [p.detach().clone() for p in ref.parameters()]
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.05)
    s.algorithm.update(x, y, None, idx)
    F.cross_entropy(ref(x), y).backward()
    ref_opt.step()
    for p, q in zip(s.algorithm.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # the step moved the weights by about lr (AdamW's first step is lr * g / (|g| + eps), plus the decay)
    step = max(float((p.detach() - b).abs().max()) for p, b in zip(s.algorithm.model.parameters(), before))
    assert 0.009 < step < 0.0111


def _hand_adamw(w0: torch.Tensor, grad: torch.Tensor, lr=0.01, wd=0.05, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW's first step written out: m = (1-b1) g, v = (1-b2) g^2, bias-corrected m^ = g, v^ = g^2."""
    m, v = (1 - b1) * grad, (1 - b2) * grad * grad
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    return w0 * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("algorithm", ["sharpdro", "erm"])
def test_adamw_base_step_is_a_hand_written_adamw_step(algorithm):
    s, (x, y, g, idx) = _session("train.optimizer=adamw", f"algorithm.name={algorithm}")
    opt = s.optimizer
    params = [p for p in s.algorithm.model.parameters()]
    before = [p.detach().clone() for p in params]
    seen = {}
    original = opt.step

    def recording_step(*a, **kw):  # the gradients the base step applies (SharpDRO's: at the perturbed point)
        seen["grads"] = [None if p.grad is None else p.grad.detach().clone() for p in params]
        seen["weights"] = [p.detach().clone() for p in params]
        return original(*a, **kw)

    opt.step = recording_step
    s.algorithm.update(x, y, g if s.algorithm.uses_groups else None, idx)
    assert "grads" in seen
    for w0, at_step, grad, p in zip(before, seen["weights"], seen["grads"], params):
        torch.testing.assert_close(at_step, w0, rtol=0, atol=0)  # SAM's perturbation undone before the step
        if grad is not None:
            torch.testing.assert_close(p.detach(), _hand_adamw(w0, grad), rtol=0, atol=1e-6)


def test_adamw_fp16_is_the_fused_kernel_and_trains():
    s, (x, y, g, idx) = _session("train.optimizer=adamw", "train.precision=fp16", "algorithm.name=sharpdro")
    assert type(s.optimizer) is torch.optim.AdamW and s.optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in s.algorithm.model.parameters()]
    s.algorithm.update(x, y, g, idx)
    assert any(not torch.equal(b, p) for b, p in zip(before, s.algorithm.model.parameters()))


def test_make_optimizer_refuses_an_unknown_kind():
    from sharpdro.errors import TrainingError

    with pytest.raises(TrainingError, match="sgd and adamw"):
        make_optimizer([nn.Parameter(torch.zeros(1))], {**default_config()["train"], "optimizer": "lion"})


# ------------------------------------------------------------------------------------------ module.path:factory
def test_factory_gets_the_keywords_its_signature_names(factories):
    net = build_model("factory_models:tiny_net", 7, 16)
    assert factories.CALLS[-1] == {"num_classes": 7, "in_channels": 3, "image_size": 16}
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    build_model("factory_models:only_classes", 5, 16)
    assert factories.CALLS[-1] == {"num_classes": 5}
    build_model("factory_models:with_dropout", 5, 16, dropout=0.3)
    assert factories.CALLS[-1] == {"num_classes": 5, "dropout": 0.3}


@pytest.mark.parametrize("name,kw,match", [
    ("no_such_module_sharpdro_xyz:f", {}, "cannot import module 'no_such_module_sharpdro_xyz'"),
    ("factory_models:missing", {}, "has no 'missing'"),
    ("factory_models:NOT_CALLABLE", {}, "is not callable"),
    ("factory_models:not_a_module", {}, "returned a str, not a torch.nn.Module"),
    ("factory_models:only_classes", {"dropout": 0.3}, "takes no dropout argument"),
    ("factory_models:only_classes", {"width": 16}, "takes no width argument"),
])
def test_bad_factories_are_one_clear_error(factories, name, kw, match):
    with pytest.raises(ConfigError, match=match):
        build_model(name, 3, 16, **kw)


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_factory_model_trains_evaluates_predicts_and_exports(factories, tmp_path, capsys, monkeypatch):
    from sharpdro.backends.torch import BACKEND
    from sharpdro.cli import main
    from sharpdro.export import ExportError, export_run, load_pretrained

    run = tmp_path / "run"
    sets = [x for s in [*TINY, "model.name=factory_models:tiny_net"] for x in ("--set", s)]
    assert main(["train", "-c", "quickstart", "--out", str(run), *sets]) == 0
    assert factories.CALLS[-1] == {"num_classes": 10, "in_channels": 3, "image_size": 16}
    assert main(["evaluate", str(run)]) == 0
    assert main(["predict", str(run), str(_png(tmp_path / "a.png")), "--top", "2"]) == 0
    assert "a.png: " in capsys.readouterr().out
    session, cfg = BACKEND.load_for_inference(run / "checkpoints" / "last.pt", device="cpu")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["algorithm"]
    assert isinstance(session.algorithm.model, nn.Sequential)
    for k, v in session.algorithm.model.state_dict().items():
        assert torch.equal(v, state[f"model.{k}"])

    out = export_run(run, tmp_path / "export")
    with pytest.raises(ExportError, match="import_factory=True"):
        load_pretrained(out)
    model = load_pretrained(out, import_factory=True)
    x = torch.rand(4, 3, 16, 16)
    logits = session.predict_logits((x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(), 4)
    got = model((x * 255).round() / 255).detach().numpy()
    np.testing.assert_allclose(got, logits, atol=1e-4)

    # the factory no longer importable: loading its checkpoint is one clear error naming it
    monkeypatch.setitem(sys.modules, "factory_models", None)
    with pytest.raises(ConfigError, match=r"last\.pt: its run trained model.name='factory_models:tiny_net', "
                                          r"which must be importable"):
        BACKEND.load_for_inference(run / "checkpoints" / "last.pt", device="cpu")


# ------------------------------------------------------------------------------------------ timm:NAME (faked)
class _FakeTimm(types.ModuleType):
    """timm is not importable beside this CPU torch (its torchvision); the same create_model contract, faked."""

    def __init__(self):
        super().__init__("timm")
        self.calls = []

    def create_model(self, name, pretrained=False, num_classes=1000, in_chans=3, **kw):
        self.calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans,
                           **kw})
        if name != "tiny_arch":
            raise RuntimeError(f"Unknown model ({name})")
        return nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             nn.Linear(4, num_classes))


@pytest.fixture
def fake_timm(monkeypatch):
    timm = _FakeTimm()
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


def test_timm_model_builds_trains_and_reloads_without_pretrained(fake_timm, tmp_path):
    from sharpdro.backends.torch import BACKEND
    from sharpdro.engine import train

    cfg = load_config("quickstart", [*TINY, "model.name=timm:tiny_arch", "model.pretrained=true"])
    summary = train(cfg, out_dir=tmp_path / "r")
    assert fake_timm.calls[0] == {"name": "tiny_arch", "pretrained": True, "num_classes": 10, "in_chans": 3}
    assert 0.0 <= summary["test_average"] <= 1.0
    assert (tmp_path / "r").name == "r" and (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
    fake_timm.calls.clear()
    BACKEND.load_for_inference(tmp_path / "r" / "checkpoints" / "last.pt", device="cpu")
    assert [c["pretrained"] for c in fake_timm.calls] == [False]  # the checkpoint has the weights


def test_timm_dropout_is_drop_rate(fake_timm):
    build_model("timm:tiny_arch", 3, 16, dropout=0.2)
    assert fake_timm.calls[-1]["drop_rate"] == 0.2


def test_timm_unknown_architecture_is_one_clear_error(fake_timm):
    with pytest.raises(ConfigError, match=r"timm:nope.*timm cannot build it.*Unknown model"):
        build_model("timm:nope", 3, 16)


def test_missing_timm_says_pip_install_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match="needs timm: pip install timm"):
        build_model("timm:resnet18", 3, 16)


def test_default_run_name_of_a_factory_model_is_a_plain_folder_name():
    from sharpdro.engine import default_run_name

    name = default_run_name(_cfg("model.name=my.models:make_net"))
    assert "my.models_make_net" in name and ":" not in name


@pytest.mark.parametrize("sets", [{"train": {"optimizer": "adamw"}}, {"model": {"name": "timm:resnet18"}},
                                  {"model": {"name": "my_models:make_net"}}])
def test_a_pytorch_only_run_does_not_convert_to_mindspore(tmp_path, sets):
    from sharpdro.backends.mindspore import convert

    ckpt = tmp_path / "last.pt"
    torch.save({"meta": {"config": {"backend": "torch", **sets}}, "algorithm": {}}, ckpt)
    with pytest.raises(ConfigError, match="MindSpore backend has its own networks and SGD only"):
        convert.torch_to_mindspore(ckpt, tmp_path / "ms.pt")
