"""Unlearning: GA, NPO, SimNPO, IdkDPO, RMU × none/GDR/KLR, SURE row masks, LoRA, one resumable trainer.

Python API: `from amnesiac.unlearn import unlearn` (see api.unlearn). Importing this package registers the
methods ("unlearn_methods") and regularisers ("regularizers"); peft is imported only when LoRA is used.
"""
from . import ga, idkdpo, npo, regularizers, rmu, simnpo  # noqa: F401  (register on import)
from .api import UnlearnResult, unlearn, weight_drift
from .common import UnlearnError
from .config import UnlearnConfig, parse_method
from .trainer import UnlearnDiverged

__all__ = ["UnlearnConfig", "UnlearnDiverged", "UnlearnError", "UnlearnResult", "parse_method", "unlearn",
           "weight_drift"]


class _CallableModule(__import__("types").ModuleType):
    """`from amnesiac import unlearn` finds this subpackage once anything has imported it (Python sets the
    package attribute), shadowing the function of the same name; calling the package calls the function."""

    def __call__(self, *args, **kwargs):
        return unlearn(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
