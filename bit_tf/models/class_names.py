"""Class names: those of the released ImageNet heads, shipped with the package, and names files.

The released BiT heads classify one of two label sets, told apart by their size:

- ILSVRC-2012 (ImageNet-1k, 1000 classes): the BiT-S upstream heads and the BiT-M
  `-ILSVRC2012` checkpoints. Their names are the first WordNet lemma of each class ("tench",
  "goldfish", ...), in the order of TensorFlow Datasets' `imagenet2012` labels, which the
  checkpoints use. Two names occur twice, as in WordNet: "crane" (the bird and the machine) and
  "maillot".
- ImageNet-21k (21843 classes): the BiT-M upstream heads. Their names are the WordNet ids
  ("n00004475", ...), in sorted order, as the checkpoints use them.

Both files were written by `tools/write_imagenet_class_names.py` from TensorFlow Datasets'
`imagenet2012` label file and timm's WordNet tables (both Apache-2.0).

Example:
    >>> from bit_tf.models import class_names
    >>> class_names.imagenet2012_class_names()[:2]
    ('tench', 'goldfish')
    >>> len(class_names.released_head_class_names(21843))
    21843
"""

from __future__ import annotations

import functools
import importlib.resources

from bit_tf.models.registry import UPSTREAM

__all__ = [
    "ILSVRC2012_FILE",
    "IMAGENET21K_FILE",
    "imagenet2012_class_names",
    "imagenet21k_wordnet_ids",
    "read_class_names_file",
    "released_head_class_names",
]

#: The package's data files, relative to the `bit_tf.models` package folder.
ILSVRC2012_FILE = "imagenet_classes/ilsvrc2012_names.txt"
IMAGENET21K_FILE = "imagenet_classes/imagenet21k_wordnet_ids.txt"


def _package_lines(relative_path: str) -> tuple[str, ...]:
    text = importlib.resources.files("bit_tf.models").joinpath(relative_path).read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.cache
def imagenet2012_class_names() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class names, in the class-id order of the released heads.

    Example:
        >>> imagenet2012_class_names()[1]
        'goldfish'
    """
    return _package_lines(ILSVRC2012_FILE)


@functools.cache
def imagenet21k_wordnet_ids() -> tuple[str, ...]:
    """The 21843 WordNet ids of the ImageNet-21k classes, in the class-id order of BiT-M.

    Example:
        >>> imagenet21k_wordnet_ids()[0]
        'n00004475'
    """
    return _package_lines(IMAGENET21K_FILE)


def released_head_class_names(num_classes: int) -> tuple[str, ...] | None:
    """The class names of a released BiT head with `num_classes` classes; None for other sizes.

    1000 classes: the ILSVRC-2012 names; 21843: the ImageNet-21k WordNet ids.

    Example:
        >>> released_head_class_names(1000)[0], released_head_class_names(10)
        ('tench', None)
    """
    if num_classes == UPSTREAM["S"]["num_classes"]:
        return imagenet2012_class_names()
    if num_classes == UPSTREAM["M"]["num_classes"]:
        return imagenet21k_wordnet_ids()
    return None


def read_class_names_file(path: str) -> list[str]:
    """The class names in a text file, one per line in class-id order (blank lines skipped).

    Raises:
        ValueError: the file cannot be read, or holds no names.

    Example:
        >>> read_class_names_file("labels.txt")
        ['daisy', 'rose', 'tulip']
    """
    try:
        with open(path, encoding="utf-8") as stream:
            names = [line.strip() for line in stream if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read class names from {path!r}: {error}.") from None
    if not names:
        raise ValueError(f"Class names file {path!r} holds no names; write one per line.")
    return names
