"""Finite random twins of every layer description (see :mod:`.registry`)."""

import importlib
import pkgutil

from .registry import (
    SAMPLERS,
    AffineRecord,
    NoFiniteTwinError,
    TwinContext,
    finite_twin,
    run_twin,
    twin_for,
)

# Every module of this package registers its family's twins on import.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SAMPLERS", "AffineRecord", "NoFiniteTwinError", "TwinContext", "finite_twin", "run_twin", "twin_for"]
