"""Groups from metadata, the way WILDS's ``Grouper`` gives them (no WILDS data set is downloaded).

A WILDS data set carries a metadata array (one row per sample, one column per field, e.g.
``background`` and ``y``); ``CombinatorialGrouper(dataset, ["background", "y"])`` numbers every
combination of the chosen fields.  ``metadata_to_group`` below does the same for a NumPy/torch
metadata array; with WILDS installed, ``grouper.metadata_to_group(metadata)`` gives the ids and
``grouper.n_groups`` the count.  Run: python examples/wilds_groups.py
"""
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.torch import SharpDRO


def metadata_to_group(metadata: torch.Tensor, fields: list[str], names: list[str]) -> tuple[torch.Tensor, int]:
    """Group id = the mixed-radix number of the chosen metadata fields (as WILDS's CombinatorialGrouper)."""
    cols = [metadata[:, fields.index(name)].long() for name in names]
    sizes = [int(c.max()) + 1 for c in cols]
    ids = torch.zeros(len(metadata), dtype=torch.long)
    for c, size in zip(cols, sizes):
        ids = ids * size + c
    n_groups = 1
    for size in sizes:
        n_groups *= size
    return ids, n_groups


def main(steps: int = 150, seed: int = 0) -> dict:
    # Waterbirds-like: label y, a spurious background that agrees with y 90% of the time
    g = torch.Generator().manual_seed(seed)
    n = 800
    y = torch.randint(0, 2, (n,), generator=g)
    background = torch.where(torch.rand(n, generator=g) < 0.9, y, 1 - y)
    x = torch.stack([y + 0.8 * torch.randn(n, generator=g), background + 0.1 * torch.randn(n, generator=g)], 1)
    metadata = torch.stack([background, y], 1)  # WILDS: dataset.metadata_array, fields dataset.metadata_fields
    groups, n_groups = metadata_to_group(metadata, ["background", "y"], ["background", "y"])
    torch.manual_seed(seed)
    model = nn.Linear(2, 2)
    opt = SharpDRO(model, torch.optim.SGD(model.parameters(), lr=0.1), num_groups=n_groups, eta=0.1)
    for _ in range(steps):
        i = torch.randint(0, n, (100,), generator=g)
        opt.step(lambda: F.cross_entropy(model(x[i]), y[i], reduction="none"), groups[i])
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    acc = [float(correct[groups == k].float().mean()) for k in range(n_groups)]
    print(f"{n_groups} groups (background, y); accuracy per group {[round(a, 3) for a in acc]}; "
          f"q {[round(v, 3) for v in opt.q.tolist()]}")
    return {"groups": groups, "n_groups": n_groups, "q": opt.q.clone(), "accuracy": acc}


if __name__ == "__main__":
    main()
