"""A non-image task: tabular regression with a mean-squared-error loss and 3 groups (no download).

The groups share one linear function; group 2's targets are much noisier, so its loss stays high and
SharpDRO moves its weight q towards it.  GroupDROLoss, the same objective without the sharpness term,
is shown for comparison.  Run: python examples/tabular_mse.py
"""
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.torch import GroupDROLoss, SharpDRO, group_balanced_sampler


def make_data(n: int = 900, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    groups = torch.multinomial(torch.tensor([0.5, 0.35, 0.15]), n, replacement=True, generator=g)
    y = x @ torch.linspace(-1, 1, 6) + torch.tensor([0.1, 0.3, 2.0])[groups] * torch.randn(n, generator=g)
    return torch.utils.data.TensorDataset(x, y, groups), groups


def main(epochs: int = 3, seed: int = 0) -> dict:
    data, groups = make_data(seed=seed)
    # group_DRO's weighted sampling: every group equally likely in a batch
    loader = torch.utils.data.DataLoader(data, batch_size=50, sampler=group_balanced_sampler(groups))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = SharpDRO(model, torch.optim.AdamW(model.parameters(), lr=1e-2), num_groups=3, eta=0.05)
    for epoch in range(epochs):
        for x, y, g in loader:
            loss = opt.step(lambda: F.mse_loss(model(x).squeeze(1), y, reduction="none"), g)
        print(f"epoch {epoch}: MSE {loss:.3f}  q {[round(v, 3) for v in opt.q.tolist()]}")

    # GroupDRO (no sharpness term): a loss module in a plain loop
    baseline = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    crit, sgd = GroupDROLoss(num_groups=3, eta=0.05), torch.optim.AdamW(baseline.parameters(), lr=1e-2)
    for _ in range(epochs):
        for x, y, g in loader:
            sgd.zero_grad()
            crit(F.mse_loss(baseline(x).squeeze(1), y, reduction="none"), g).backward()
            sgd.step()
    return {"sharpdro_q": opt.q.clone(), "groupdro_q": crit.q.clone()}


if __name__ == "__main__":
    main()
