"""Every script in examples/ runs here, on its own tiny synthetic data, and does what it says."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from script_loader import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    return load_script(EXAMPLES / f"{name}.py", f"example_{name}")


def test_every_example_is_tested_here():
    tested = {"own_loop", "tabular_mse", "wilds_groups", "lightning_module"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_own_loop_moves_q_to_the_noisiest_group():
    q = load("own_loop").main(steps=120)
    assert int(q.argmax()) == 2 and float(q[2]) > 0.4 and torch.isclose(q.sum(), torch.tensor(1.0))


def test_tabular_mse_sharpdro_and_groupdro_weight_the_noisy_group():
    out = load("tabular_mse").main(epochs=1)
    assert float(out["sharpdro_q"][2]) > 0.5 and float(out["groupdro_q"][2]) > 0.5


def test_wilds_style_groups_are_the_metadata_combinations():
    mod = load("wilds_groups")
    meta = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [1, 1]])
    ids, n = mod.metadata_to_group(meta, ["background", "y"], ["background", "y"])
    assert n == 4 and ids.tolist() == [0, 1, 2, 3, 3]
    out = mod.main(steps=100)
    q = out["q"]
    # the minority groups (background disagrees with y: ids 1 and 2) get the weight
    assert float(q[1] + q[2]) > float(q[0] + q[3])


def test_lightning_module_with_manual_optimisation():
    pytest.importorskip("lightning")
    module = load("lightning_module").main(epochs=1)
    q = module.sharpdro.q
    assert not torch.allclose(q, torch.full((3,), 1 / 3)) and torch.isclose(q.sum(), torch.tensor(1.0))
    assert module.sharpdro.base_optimizer.state  # the base optimizer stepped (momentum buffers)
