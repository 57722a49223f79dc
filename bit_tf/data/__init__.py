"""Input data: image sources (arrays, class folders, TFDS, records), the fine-tuning pipelines,
MixUp, orientation, encoded-image caches and example readers.

The package itself is the pipelines' API (`bit_tf.data.from_arrays`, `bit_tf.data.ImageSource`,
...), as the module `bit_tf.data` was before the package.

Example:
    >>> import numpy as np
    >>> from bit_tf import data
    >>> source = data.from_arrays(np.random.rand(8, 32, 32, 3), np.arange(8) % 2)
    >>> batches = data.train_pipeline(source, batch_size=4, resize=32, crop=32)
"""

from __future__ import annotations

from bit_tf.data.pipelines import *  # noqa: F403 (the names of its __all__)
from bit_tf.data.pipelines import __all__ as __all__
