"""What every training recipe shares: a run's settings, checkpoints and progress, interruption
and its signals, the run lock, file errors, optimizers and micro-batch planning.

Example:
    >>> from bit_tf.training.optimizers import FusedMomentumSGD
    >>> optimizer = FusedMomentumSGD(learning_rate=0.003, momentum=0.9)
"""
