"""SharpDRO inside a PyTorch Lightning ``LightningModule`` (manual optimisation).

``pip install lightning`` (the ``lightning`` extra).  SharpDRO runs both passes, the backward passes
and the optimizer step itself, so the module turns automatic optimisation off and calls
``SharpDRO.step`` in ``training_step``; Lightning still drives the loop, logging and checkpoints
(``on_save_checkpoint`` stores q).  Use Lightning's default fp32 precision: for mixed precision
pass ``precision="bf16"`` / ``"fp16"`` to SharpDRO instead of a Lightning precision plugin.
Run: python examples/lightning_module.py
"""
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.torch import SharpDRO


class SharpDROModule(L.LightningModule):
    def __init__(self, num_groups: int = 3, lr: float = 0.05):
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
        self.num_groups, self.lr = num_groups, lr
        self.sharpdro = None

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)

    def on_fit_start(self):
        # the raw optimizer Lightning built (LightningOptimizer wraps it)
        self.sharpdro = SharpDRO(self.net, self.optimizers().optimizer, self.num_groups)

    def training_step(self, batch, batch_idx):
        x, y, g = batch
        loss = self.sharpdro.step(lambda: F.cross_entropy(self.net(x), y, reduction="none"), g)
        self.log("train_loss", loss)
        return loss

    def on_save_checkpoint(self, checkpoint):
        checkpoint["sharpdro"] = self.sharpdro.state_dict()


def main(epochs: int = 2, seed: int = 0) -> SharpDROModule:
    L.seed_everything(seed, verbose=False)
    n = 300
    x, y = torch.randn(n, 4), torch.randint(0, 2, (n,))
    x[:, 0] += 2 * y - 1
    g = torch.arange(n) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, g), batch_size=30, shuffle=True)
    module = SharpDROModule()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    print(f"q {[round(v, 3) for v in module.sharpdro.q.tolist()]}")
    return module


if __name__ == "__main__":
    main()
