"""amnesiac: did the model really forget, or does the knowledge come back?

Top-level names are imported lazily so that `import amnesiac` stays cheap (no torch/transformers).
"""
__version__ = "0.1.0"

_LAZY = {
    "unlearn": ("amnesiac.unlearn", "unlearn"),
    "load_model": ("amnesiac.models", "load_model"),
    "load_dataset": ("amnesiac.data", "load_dataset"),
    "prepare": ("amnesiac.models.tiny", "prepare"),
    "Audit": ("amnesiac.audit", "Audit"),
    "AuditConfig": ("amnesiac.audit", "AuditConfig"),
    "run_demo": ("amnesiac.demo", "run_demo"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'amnesiac' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
