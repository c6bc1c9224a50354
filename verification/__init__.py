"""Verification: random finite networks, read from the same architecture description as the analytic
kernels, tested statistically against them."""

from .ensembles import EnsembleSample, default_inputs, sample_ensemble, split_readout
from .monte_carlo import MonteCarloGram, monte_carlo_gram
from .mutants import MUTANTS, Mutant
from .ntk import NTKSample, empirical_ntk, verify_ntk
from .registry_archs import ARCHITECTURES, CatalogueEntry, register_architecture
from .statistics import (
    ConvergenceResult,
    MeanTestResult,
    extrapolation_test,
    hotelling_p_value,
    mean_test,
    width_convergence,
)
from .training import TrainedEnsemble, train_mlp_ensemble
from .twins import NoFiniteTwinError, TwinContext, finite_twin
from .verify import analytic_kernel, verify

__all__ = [
    "analytic_kernel", "ARCHITECTURES", "CatalogueEntry", "ConvergenceResult", "default_inputs", "empirical_ntk",
    "EnsembleSample", "extrapolation_test", "finite_twin", "hotelling_p_value", "mean_test", "MeanTestResult",
    "monte_carlo_gram", "MonteCarloGram", "Mutant", "MUTANTS", "NoFiniteTwinError", "NTKSample",
    "register_architecture", "sample_ensemble",
    "split_readout", "train_mlp_ensemble", "TrainedEnsemble", "TwinContext", "verify", "verify_ntk",
    "width_convergence",
]
