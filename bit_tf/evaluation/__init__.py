"""Evaluation of transfer: VTAB-1k (`bit_tf.evaluation.vtab`).

Example:
    >>> from bit_tf.evaluation import vtab
    >>> results = vtab.run_vtab("BiT-S-R50x1", ["dtd"], weights="BiT-S-R50x1")
"""
