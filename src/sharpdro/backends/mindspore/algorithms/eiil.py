"""Environment Inference for Invariant Learning (Creager et al. 2021), with GroupDRO or SharpDRO on top."""
from __future__ import annotations

import numpy as np
import mindspore as ms

from sharpdro.backends.mindspore.algorithms.base import (STEPS, Algorithm, PrepareContext, collect_logits,
                                                         register_step, train_reference_erm)
from sharpdro.backends.mindspore.algorithms.groupdro import GroupDRO  # noqa: F401  (registers the robust steps)
from sharpdro.backends.mindspore.algorithms.sharpdro import SharpDRO  # noqa: F401
from sharpdro.data.batches import SamplingPlan
from sharpdro.errors import ConfigError
from sharpdro.methods.eiil import (infer_environments, irm_penalty, irm_scale_grads,  # noqa: F401  (framework-neutral)
                                   run_inference)


@register_step("eiil")
class EIIL(Algorithm):
    """Pre-stage: ERM reference (``eiil_epochs``, chosen by ``eiil_reference``), its logits on every training point, two inferred
    environments (buffer ``env``); training: ``eiil_robust`` (GroupDRO or SharpDRO over 2 groups, held as
    ``self.robust`` and sharing the model) with ``env[idx]`` in place of severities."""

    def __init__(self, model, num_classes, num_groups, hparams=None, train_size=0, **kwargs):
        super().__init__(model, num_classes, num_groups, hparams, train_size, **kwargs)
        if self.train_size < 1:
            raise ConfigError("eiil needs train_size (one environment id per training point)")
        robust_cls = STEPS[self.hparams["eiil_robust"]]
        self.robust = robust_cls(model, num_classes, 2, self.hparams, train_size, register_model=False)
        self.children["robust"] = self.robust
        self.epochs = self.hparams["eiil_epochs"]
        self.reference = self.hparams["eiil_reference"]
        self.steps = int(self.hparams["eiil_steps"])
        self.lr = float(self.hparams["eiil_lr"])
        self.tol = float(self.hparams["eiil_tol"])
        self.early_stop = bool(self.hparams["eiil_early_stop"])
        self.buffers["env"] = np.zeros(self.train_size, dtype=np.int64)

    def configure(self, optimizer):
        super().configure(optimizer)
        self.robust.configure(optimizer)

    def set_environments(self, env) -> None:
        env = np.asarray(env).astype(np.int64)
        self.buffers["env"] = env.copy()
        if self.robust.gen_adjustment > 0:
            self.robust.set_group_counts(np.bincount(env, minlength=2))
        self.robust.mark_prepared()

    apply_prestage = set_environments

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.train_size != self.train_size:
            raise ConfigError(f"eiil was built for {self.train_size} training points, the pre-stage has "
                              f"{ctx.train_size}")
        epochs = int(self.epochs) if self.epochs is not None else int(ctx.run_epochs)
        report: dict = {}
        reference = train_reference_erm(ctx, epochs, "EIIL reference ERM", select=self.reference, report=report)
        logits, labels = collect_logits(reference, ctx, "EIIL reference logits")
        if bool((labels < 0).any()):
            raise ConfigError("ordered_batches() did not cover every training index")
        del reference
        init = self.randn(len(labels)) if self.randn is not None else None
        result = run_inference(logits, labels, self.steps, self.lr, init=init, tol=self.tol, stop=self.early_stop)
        self.set_environments(result.env)
        self.mark_prepared()
        self.prestage_info = {**result.summary(), "max_steps": self.steps, "lr": self.lr, "tol": self.tol,
                              "reference": report, "members": result.env == 1}

    def sampling_plan(self) -> SamplingPlan:
        return SamplingPlan(groups=self.buffers["env"].copy())

    def update(self, x, y, groups, idx):
        e = self.buffers["env"][np.asarray(idx)]
        stats = self.robust.update(x, y, ms.Tensor(e.astype(np.int32)), idx)
        stats["selected"] = e == 1
        return stats
