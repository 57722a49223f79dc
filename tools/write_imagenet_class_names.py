"""Writes the ImageNet class-name files that bit_tf ships (see `bit_tf.models.class_names`).

- `bit_tf/models/imagenet_classes/ilsvrc2012_names.txt`: the 1000 ILSVRC-2012 classes in the order
  of TensorFlow Datasets' `imagenet2012` label file (WordNet ids, the order of the released heads),
  each named by the first lemma of its WordNet synset, from timm's `imagenet_synset_to_lemma.txt`.
- `bit_tf/models/imagenet_classes/imagenet21k_wordnet_ids.txt`: the 21843 ImageNet-21k WordNet ids,
  in the order of the BiT-M heads, from timm's `imagenet21k_goog_synsets.txt`.

TensorFlow Datasets and timm are Apache-2.0. Run from the repository root, with both installed:

    python tools/write_imagenet_class_names.py
"""

from __future__ import annotations

import importlib.util
import os


def package_folder(name: str) -> str:
    """The folder of an installed package, found without importing it (timm imports torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"This script reads files of the {name} package: pip install {name}.")
    return spec.submodule_search_locations[0]


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPOSITORY, "bit_tf", "models", "imagenet_classes")
TFDS_LABELS = os.path.join(
    package_folder("tensorflow_datasets"), "datasets", "imagenet2012", "labels.txt"
)
TIMM_TABLES = os.path.join(package_folder("timm"), "data", "_info")


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as stream:
        return [line.strip() for line in stream if line.strip()]


def write_lines(name: str, lines: list[str]) -> None:
    path = os.path.join(TARGET, name)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} lines to {os.path.relpath(path, REPOSITORY)}")


def main() -> None:
    wordnet_ids = read_lines(TFDS_LABELS)
    lemmas = dict(
        line.split("\t", 1)
        for line in read_lines(os.path.join(TIMM_TABLES, "imagenet_synset_to_lemma.txt"))
    )
    names = [lemmas[wordnet_id].split(",")[0].strip() for wordnet_id in wordnet_ids]
    if len(names) != 1000:
        raise SystemExit(f"Expected 1000 ILSVRC-2012 classes in {TFDS_LABELS}, got {len(names)}.")
    wordnet_ids_21k = read_lines(os.path.join(TIMM_TABLES, "imagenet21k_goog_synsets.txt"))
    if len(wordnet_ids_21k) != 21843:
        raise SystemExit(f"Expected 21843 ImageNet-21k classes, got {len(wordnet_ids_21k)}.")
    os.makedirs(TARGET, exist_ok=True)
    write_lines("ilsvrc2012_names.txt", names)
    write_lines("imagenet21k_wordnet_ids.txt", wordnet_ids_21k)


if __name__ == "__main__":
    main()
