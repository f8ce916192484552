"""SharpDRO in your own training loop: image classification, cross-entropy, groups you choose.

Synthetic 16x16 images (no download); group 2 is rare and noisy.  Run: python examples/own_loop.py
"""
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.torch import SharpDRO


def main(steps: int = 200, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    n = 600
    y = torch.randint(0, 2, (n,))
    groups = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), n, replacement=True)  # 2: rare
    noise = torch.tensor([1.0, 2.0, 6.0])[groups].view(-1, 1, 1, 1)  # group 2: the hardest
    x = 0.3 * (y.float() - 0.5).view(-1, 1, 1, 1) + noise * torch.randn(n, 3, 16, 16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = SharpDRO(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), num_groups=3, rho=0.05)
    model.train()
    for step in range(steps):
        i = torch.randint(0, n, (64,))
        loss = opt.step(lambda: F.cross_entropy(model(x[i]), y[i], reduction="none"), groups[i])
        if step % 50 == 0:
            print(f"step {step}: loss {loss:.3f}  q {[round(v, 3) for v in opt.q.tolist()]}")
    return opt.q


if __name__ == "__main__":
    main()
