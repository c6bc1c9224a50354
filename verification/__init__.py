"""Verification: random finite networks, read from the same architecture description as the analytic
kernels, tested statistically against them."""

from .ensembles import EnsembleSample, default_inputs, sample_ensemble, split_readout
from .twins import NoFiniteTwinError, TwinContext, finite_twin

__all__ = ["EnsembleSample", "NoFiniteTwinError", "TwinContext", "default_inputs", "finite_twin",
           "sample_ensemble", "split_readout"]

from .mutants import MUTANTS, Mutant  # noqa: E402
from .registry_archs import ARCHITECTURES, CatalogueEntry, register_architecture  # noqa: E402
from .statistics import (  # noqa: E402
    ConvergenceResult,
    MeanTestResult,
    extrapolation_test,
    hotelling_p_value,
    mean_test,
    width_convergence,
)
from .verify import analytic_kernel, verify  # noqa: E402

__all__ += ["ARCHITECTURES", "CatalogueEntry", "ConvergenceResult", "MUTANTS", "MeanTestResult", "Mutant",
            "analytic_kernel", "extrapolation_test", "hotelling_p_value", "mean_test", "register_architecture",
            "verify", "width_convergence"]
from .ntk import NTKSample, empirical_ntk, train_mlp_ensemble, verify_ntk  # noqa: E402

__all__ += ["NTKSample", "empirical_ntk", "train_mlp_ensemble", "verify_ntk"]
