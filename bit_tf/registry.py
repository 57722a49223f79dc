"""The registry of BiT: model names, units per depth, upstream heads, released checkpoints.

Tables as data; `bit_tf.models` builds from them and `bit_tf.weights` resolves released
checkpoint names with them.

Example:
    >>> from bit_tf import registry
    >>> registry.parse_model_name("BiT-M-R50x1")
    ('M', 50, 1)
    >>> "BiT-S-R101x3" in registry.RELEASED_CHECKPOINTS
    True
"""

from __future__ import annotations

import re

# Units per block for each depth; 18 and 34 use the basic unit, the rest the bottleneck.
UNITS_PER_BLOCK = {
    18: (2, 2, 2, 2),
    26: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BASIC_DEPTHS = (18, 34)
WIDTH_FACTORS = (1, 2, 3, 4)

# The upstream data of each prefix sets the default head.
UPSTREAM = {
    "S": {"num_classes": 1000, "dataset": "ILSVRC-2012"},
    "M": {"num_classes": 21843, "dataset": "ImageNet-21k"},
    "L": {"num_classes": 18291, "dataset": "JFT-300M"},
}
_NAME_PATTERN = re.compile(r"^BiT-([SML])-R(\d+)x(\d+)$")


# The architectures the authors released weights for: BiT-S and BiT-M upstream, and BiT-M
# fine-tuned on ILSVRC-2012.
RELEASED_ARCHITECTURES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")
RELEASED_CHECKPOINTS = tuple(
    [f"BiT-{prefix}-{arch}" for prefix in ("S", "M") for arch in RELEASED_ARCHITECTURES]
    + [f"BiT-M-{arch}-ILSVRC2012" for arch in RELEASED_ARCHITECTURES]
)


def list_models() -> list[str]:
    """All model names that `create_model` knows, e.g. "BiT-M-R50x1".

    Example:
        >>> "BiT-S-R101x3" in list_models()
        True
    """
    return [
        f"BiT-{prefix}-R{depth}x{width}"
        for prefix in UPSTREAM
        for depth in UNITS_PER_BLOCK
        for width in WIDTH_FACTORS
    ]


def parse_model_name(name: str) -> tuple[str, int, int]:
    """Splits "BiT-M-R50x1" into ("M", 50, 1), with a clear error for unknown names.

    Example:
        >>> parse_model_name("BiT-S-R152x4")
        ('S', 152, 4)
    """
    match = _NAME_PATTERN.match(name) if isinstance(name, str) else None
    if not match:
        raise ValueError(
            f"Unknown model name {name!r}: expected 'BiT-{{S,M,L}}-R{{depth}}x{{width}}', "
            f"for example 'BiT-M-R50x1'. list_models() lists them all."
        )
    prefix, depth, width = match.group(1), int(match.group(2)), int(match.group(3))
    if depth not in UNITS_PER_BLOCK or width not in WIDTH_FACTORS:
        raise ValueError(
            f"Unknown model name {name!r}: depth must be one of {sorted(UNITS_PER_BLOCK)} and "
            f"width one of {WIDTH_FACTORS}."
        )
    return prefix, depth, width
