"""Command-line programs (absl) of bit-tf: the layer that composes bit_tf and hub_export."""
