"""The method descriptions (sharpdro.methods) are the one place a method is described.

- every other module asks them: no method name is written outside ``methods/`` and the
  backends' ``algorithms/`` folders, and they import without cycles;
- the config's flat ``algorithm.*`` keys built from them are the ones of before (the
  committed sweep folders keep their hashes);
- a new method is one description plus one step per backend (a toy one is trained here
  through the real engine on both backends, registered from this module only).
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sharpdro import config, methods
from sharpdro.backends.torch.algorithms import ALGORITHMS, Algorithm, build_algorithm, register_step
from sharpdro.backends.torch.algorithms.base import STEPS
from sharpdro.config import NUM, ConfigError, Field, load_config, validate
from sharpdro.experiments.sweep import job_hash
from sharpdro.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sharpdro"
NAMES = ("erm", "sam", "groupdro", "sharpdro", "sharpdro_agnostic", "jtt", "eiil")


# ----------------------------------------------------------------------------- the registry
def test_builtin_methods_and_their_order():
    assert methods.names() == NAMES == config.ALGORITHMS
    assert methods.display_order() == ("erm", "sam", "groupdro", "jtt", "eiil", "sharpdro", "sharpdro_agnostic")
    assert [methods.label(n) for n in methods.display_order()] == [
        "ERM", "SAM", "GroupDRO", "JTT", "EIIL", "SharpDRO", "SharpDRO (agnostic)"]
    assert methods.label("unknown_method") == "unknown_method" and methods.rank("unknown_method") == len(NAMES)
    with pytest.raises(ConfigError, match="valid algorithms: erm, sam"):
        methods.get("nope")


# The algorithm section before it was built from the descriptions: keys, order and defaults
# (any change renames every sweep job folder).
ALGORITHM_DEFAULTS = {
    "name": "erm", "rho": 0.05, "adaptive": False, "bn_second_pass": "freeze", "eta": 0.01, "gen_adjustment": 0.0,
    "perturb_on": "batch", "add_back_first_grad": True, "score": "msp", "select": "top_fraction", "fraction": 0.2,
    "weighting": "hard", "temperature": 1.0, "second_pass_selected_only": False, "jtt_epochs": 1,
    "jtt_lambda_up": 6.0, "eiil_epochs": 1, "eiil_steps": 2000, "eiil_lr": 0.001, "eiil_robust": "groupdro",
}


# Keys added since, with their defaults (a new key at its default does not rename a job).
ADDED_DEFAULTS = {"q_absent": "zero", "jtt_mode": "upsample", "jtt_lr": None, "eiil_reference": "val_loss",
                  "eiil_tol": 1e-4, "eiil_early_stop": True,
                  "second_pass_fraction": 1.0, "second_pass_sampling": "systematic", "sampled_bn_stats": "sample",
                  "warmup_epochs": 2, "memory_decay": 0.5, "refresh_steps": 10, "class_normalize": True}


def test_algorithm_section_is_the_flat_one_of_before():
    section = config.default_config()["algorithm"]
    assert set(section) == set(ALGORITHM_DEFAULTS) | set(ADDED_DEFAULTS)
    assert [k for k in section if k in ALGORITHM_DEFAULTS] == list(ALGORITHM_DEFAULTS)
    changed = {k.split(".")[1]: v for k, v in config.FORMER_DEFAULTS.items() if k.startswith("algorithm.")}
    # outside the algorithm section: train.precision's default became auto (jobs in fp32 keep their names)
    assert {k: v for k, v in config.FORMER_DEFAULTS.items() if not k.startswith("algorithm.")} == \
        {"train.precision": "fp32"}
    # the documented default changes (EIIL: the authors' steps and a converged reference; the agnostic
    # selection: global, on the input score)
    assert changed == {"eiil_steps": 2000, "eiil_epochs": 1, "score": "msp", "select": "top_fraction", "fraction": 0.2}
    for key, value in ALGORITHM_DEFAULTS.items():
        if key in changed:
            assert changed[key] == value and section[key] != value, key
        else:
            assert section[key] == value and type(section[key]) is type(value), key
    assert {k: section[k] for k in ADDED_DEFAULTS} == ADDED_DEFAULTS
    assert config.SCHEMA["algorithm"]["name"].choices == NAMES
    assert config.SCHEMA["algorithm"]["eiil_robust"].choices == ("groupdro", "sharpdro")


def test_shared_hyperparameters_are_declared_once():
    fields = methods.hparam_fields()
    for spec in methods.all_methods():
        for key, f in spec.hparams.items():
            assert f is fields[key], (spec.name, key)
    assert set(methods.get("sharpdro").hparams) >= {"rho", "eta", "perturb_on"}
    assert "eta" not in methods.get("sam").hparams
    for key, f in fields.items():
        if f.search is not None:
            assert f.search[0] in ("log_uniform", "uniform", "int_uniform", "choice"), key


def test_committed_sweep_folders_keep_their_hashes():
    root = ROOT / "docs" / "results" / "cifar10_small"
    folders = sorted(d for d in root.iterdir() if (d / "config.yaml").is_file())
    assert len(folders) == 42
    for d in folders:
        cfg = validate(yaml.safe_load((d / "config.yaml").read_text()))
        assert job_hash(cfg) == d.name


def test_agnostic_evidence_folders_keep_their_hashes():
    root = ROOT / "docs" / "results" / "agnostic" / "runs"
    folders = sorted(d for d in root.iterdir() if (d / "config.yaml").is_file())
    assert len(folders) == 7
    for d in folders:
        cfg = validate(yaml.safe_load((d / "config.yaml").read_text()))
        assert job_hash(cfg) == d.name
        assert not (d / "checkpoints").exists()


def test_descriptions_match_the_torch_steps():
    assert tuple(ALGORITHMS) == NAMES
    for name, cls in ALGORITHMS.items():
        spec = methods.get(name)
        assert cls.spec is spec and cls.uses_groups == spec.needs_groups
        hp = {"select": "threshold"} if name == "sharpdro_agnostic" else {}
        if "second_pass_fraction" in spec.hparams:  # the sampler's buffers exist only when it samples
            hp = {"second_pass_fraction": 0.5}
        algo = build_algorithm(name, torch.nn.Linear(4, 3), 3, 4, hp, train_size=10)
        extra = {k for k in algo.state_dict() if not k.startswith("model.")} - {"prepared_flag"}
        assert extra == set(spec.buffers), name
        assert (spec.prestage is not None) == (type(algo).apply_prestage is not Algorithm.apply_prestage), name
        if spec.prestage is not None:
            assert spec.prestage.records in spec.buffers


def test_cross_key_check_is_the_methods_own():
    bad = {**ALGORITHM_DEFAULTS, "second_pass_selected_only": True, "select": "threshold"}
    with pytest.raises(ConfigError, match="second_pass_selected_only"):
        methods.get("sharpdro_agnostic").validate(bad)
    methods.get("erm").validate(bad)  # a key another method reads does not concern ERM


# ----------------------------------------------------------------------------- the source tree
METHOD_HOMES = (SRC / "methods", SRC / "backends" / "torch" / "algorithms", SRC / "backends" / "mindspore" / "algorithms")
# "sharpdro" is also the package's (and the program's) name: these uses are not the method.
PACKAGE_NAME_USES = ('resources.files("sharpdro")', 'getLogger("sharpdro")', 'prog="sharpdro"', '/ "sharpdro" /',
                     '"sharpdro" in str(', 'hashsalt"] = "sharpdro"', 'name: str = "sharpdro"',
                     'PACKAGE = "sharpdro"')


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        if not any(home in path.parents for home in METHOD_HOMES):
            yield path


def test_no_method_name_literal_outside_the_method_homes():
    found = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                line = lines[node.lineno - 1]
                if node.value == "sharpdro" and any(use in line for use in PACKAGE_NAME_USES):
                    continue
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {line.strip()}")
    assert not found, "method names written outside sharpdro/methods and the algorithms folders:\n" + "\n".join(found)


def _import_graph() -> dict[str, set[str]]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for mod, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):  # every import, deferred ones inside functions too
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if p.name == "__init__.py" else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def test_method_descriptions_and_steps_import_without_cycles():
    graph = _import_graph()
    ours = [m for m in graph if m.startswith(("sharpdro.methods", "sharpdro.backends.torch.algorithms",
                                              "sharpdro.backends.mindspore.algorithms"))
            or m in ("sharpdro.config", "sharpdro.fields", "sharpdro.errors")]
    assert "sharpdro.methods.registry" in ours
    for start in ours:  # no path leads back to where it started
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    for m in ours:
        if m.startswith("sharpdro.methods"):
            assert not any(d.startswith(("sharpdro.backends", "sharpdro.config")) for d in graph[m]), m


# ----------------------------------------------------------------------------- a new method
TOY = "erm_label_smoothing"
SMOOTHING = Field(0.1, NUM, "label smoothing of the cross-entropy", min=0.0, max=1.0, search=("uniform", 0.0, 0.3))


def _torch_step():
    @register_step(TOY)
    class LabelSmoothingERM(Algorithm):
        def update(self, x, y, groups, idx):
            opt = self._begin_step()
            logits, per_sample_loss = self._forward(x, y)
            eps = float(self.hparams["smoothing"])
            uniform = -torch.log_softmax(logits, 1).mean(1)
            self._backward(((1 - eps) * per_sample_loss + eps * uniform).mean())
            self._finish_step(opt)
            return self._stats(logits, per_sample_loss, y)


def _mindspore_step():
    from mindspore import ops

    from sharpdro.backends.mindspore.algorithms import Algorithm as MsAlgorithm, register_step as ms_register
    from sharpdro.backends.mindspore.algorithms.base import per_sample_losses

    @ms_register(TOY)
    class LabelSmoothingERM(MsAlgorithm):
        def update(self, x, y, groups, idx):
            model, eps = self.model, float(self.hparams["smoothing"])

            def loss(x, y):
                logits, per = per_sample_losses(model, x, y)
                uniform = -ops.log_softmax(logits, 1).mean(1)
                return ((1 - eps) * per + eps * uniform).mean(), (logits, per)

            (_, (logits, per)), grads = self._grad("step", loss)(x, y)
            self._opt()(grads)
            return self._stats(logits, per, y)


def _mindspore_available() -> bool:
    return importlib.util.find_spec("mindspore") is not None


@contextlib.contextmanager
def toy_method():
    methods.register(methods.MethodSpec(name=TOY, label="ERM (label smoothing)", summary="ERM, smoothed labels",
                                        hparams={"smoothing": SMOOTHING}))
    try:
        _torch_step()
        if _mindspore_available():
            _mindspore_step()
        yield
    finally:
        methods.unregister(TOY)
        STEPS.pop(TOY, None)
        if _mindspore_available():
            from sharpdro.backends.mindspore.algorithms import STEPS as MS_STEPS

            MS_STEPS.pop(TOY, None)


TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=2", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]


@pytest.mark.parametrize("backend", ["torch", "mindspore"])
def test_a_new_method_is_one_description_and_one_step_per_backend(tmp_path, backend):
    if backend == "mindspore":
        if not _mindspore_available():
            pytest.skip("mindspore is not importable")
        from sharpdro.backends.mindspore import _runtime

        _runtime.configure("cpu")
    from sharpdro.engine import train

    with toy_method():
        cfg = load_config("quickstart", [*TINY, f"backend={backend}", f"algorithm.name={TOY}",
                                         "algorithm.smoothing=0.2"])
        assert cfg["algorithm"]["smoothing"] == 0.2
        with pytest.raises(ConfigError, match="algorithm.smoothing"):
            load_config("quickstart", [f"algorithm.name={TOY}", "algorithm.smoothing=2"])
        summary = train(cfg, out_dir=tmp_path / "run")
        records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [0, 1]
        assert all(np.isfinite(r["train"]["loss"]) for r in records)
        assert all(0.0 <= a <= 1.0 for a in summary["test_accuracy"].values())
        assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["algorithm"]["smoothing"] == 0.2
    # gone again: the config and its hashes are those of the built-in methods
    assert "smoothing" not in config.default_config()["algorithm"] and TOY not in methods.names()
    assert TOY not in STEPS
