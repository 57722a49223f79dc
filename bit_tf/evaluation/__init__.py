"""Evaluation of transfer: VTAB-1k (`bit_tf.evaluation.vtab`).

Example:
    >>> from bit_tf.evaluation import vtab
    >>> results = vtab.run_vtab("BiT-S-R50x1", ["dtd"], weights="BiT-S-R50x1")
"""

import importlib


def __getattr__(name: str):
    """`bit_tf.evaluation.vtab` on first use, without an import of it first."""
    if name == "vtab":
        return importlib.import_module(f"{__name__}.vtab")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
