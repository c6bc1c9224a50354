"""Verification: random finite networks, read from the same architecture description as the analytic
kernels, tested statistically against them."""

from .ensembles import EnsembleSample, default_inputs, sample_ensemble, split_readout
from .twins import NoFiniteTwinError, TwinContext, finite_twin

__all__ = ["EnsembleSample", "NoFiniteTwinError", "TwinContext", "default_inputs", "finite_twin",
           "sample_ensemble", "split_readout"]
