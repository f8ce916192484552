"""Empirical risk minimisation: the plain baseline."""
from sharpdro.methods.registry import MethodSpec, register

SPEC = register(MethodSpec(
    name="erm", label="ERM", order=0,
    summary="mean cross-entropy, one optimizer step",
))
