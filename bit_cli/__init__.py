"""Command-line programs (absl) of bit-tf: the layer that composes bit_tf and hub_export."""

# bit_tf sets TensorFlow's CPU options (oneDNN kernels), which only count if it is imported
# before TensorFlow.
import bit_tf  # noqa: F401
