"""GroupDRO (Sagawa et al. 2020) over the severity groups."""
from sharpdro.methods.hparams import GROUP_HPARAMS
from sharpdro.methods.registry import Q_RECORD, MethodSpec, register

GROUP_BUFFERS = ("q", "group_counts", "adjustment")

SPEC = register(MethodSpec(
    name="groupdro", label="GroupDRO", order=2, needs_groups=True,
    summary="exponentiated-gradient group weights q, loss sum_g q_g L_g",
    hparams=dict(GROUP_HPARAMS),
    buffers=GROUP_BUFFERS,
    record_keys=Q_RECORD,
    group_sampling=True,
    tune=("algorithm.eta", "algorithm.q_absent", "data.sampler"),
))
