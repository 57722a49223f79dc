"""The Markdown documentation published beside a module: a TF-Hub / Kaggle Models model card.

Example:
    >>> print(model_card("bit/m-r50x1", 1, read_metadata("exports/bit_m-r50x1")))
    # bit/m-r50x1 (version 1)
    ...
"""

from __future__ import annotations

from bit_tf.finetune import hyperrule

UPSTREAM_DATA = {
    "s": "ILSVRC-2012 (ImageNet-1k: 1.28M images, 1000 classes)",
    "m": "ImageNet-21k (14M images, 21843 classes)",
    "l": "JFT-300M (300M images, 18291 classes; not publicly released)",
}


def _upstream_from_name(*names: str) -> str | None:
    for name in names:
        lowered = (name or "").lower().replace("-", "_")
        for prefix, data in UPSTREAM_DATA.items():
            if f"bit_{prefix}_" in lowered or f"bit/{prefix}_" in lowered:
                return data
    return None


def _hyperrule_paragraph() -> str:
    """The fine-tuning recipe, with every number read from `bit_tf.finetune.hyperrule`."""
    small, medium, large = (
        hyperrule.get_schedule(size)
        for size in (1, hyperrule.SMALL_DATASET, hyperrule.LARGE_DATASET)
    )
    small_images = hyperrule.get_resolution((64, 64))
    large_images = hyperrule.get_resolution((224, 224))
    largest_model = hyperrule.get_resolution((224, 224), "BiT-M-R152x4")
    mixup = hyperrule.get_mixup(hyperrule.SMALL_DATASET)
    percents = ", ".join(f"{round(100 * fraction)}%" for fraction in hyperrule.DECAY_FRACTIONS)
    return (
        f"Follow the BiT-HyperRule: SGD with momentum 0.9, learning rate {hyperrule.BASE_LR} "
        f"(batch {hyperrule.BASE_BATCH_SIZE}), decayed by 10x at {percents} of training; "
        f"{small[-1]} steps for fewer than {hyperrule.SMALL_DATASET:,} examples, "
        f"{medium[-1]:,} for fewer than {hyperrule.LARGE_DATASET:,}, else {large[-1]:,}, "
        f"including a linear warm-up of {small[0]} steps ({medium[0]} from "
        f"{hyperrule.SMALL_DATASET:,} examples on); resize images under 96x96 pixels to "
        f"{small_images[0]} and random-crop {small_images[1]}, otherwise resize to "
        f"{large_images[0]} and crop {large_images[1]} ({largest_model[0]} and "
        f"{largest_model[1]} for R152x4); MixUp (alpha {mixup}) "
        f"from {hyperrule.SMALL_DATASET:,} examples on; a zero-initialised new head; no weight "
        "decay. GroupNorm makes the module independent of the batch size, so `training=True` "
        "needs no special care."
    )


#: A model card lists up to this many class names in full.
LISTED_CLASS_NAMES = 100


def _classes_section(class_names: list[str] | None) -> list[str]:
    """The card's "Classes" section (the class-id order of the outputs); none without names."""
    if not class_names:
        return []
    listed = class_names[:LISTED_CLASS_NAMES]
    lines = ["## Classes", "", f"{len(class_names)} classes, by class id:", ""]
    lines += [f"{index}. {name}" for index, name in enumerate(listed)]
    if len(class_names) > len(listed):
        lines += [
            "",
            f"... and {len(class_names) - len(listed)} more: all of them are in "
            "`bit_tf_module.json` beside the SavedModel (`class_names`).",
        ]
    return [*lines, ""]


def _depth(metadata: dict) -> int | None:
    units = metadata.get("units_per_block")
    if not units:
        return None
    per_unit = 3 if metadata.get("unit", "bottleneck") == "bottleneck" else 2
    return per_unit * sum(units) + 2


def model_card(
    name: str,
    version: int,
    metadata: dict,
    upstream: str | None = None,
    license_name: str = "Apache-2.0",
    description: str | None = None,
) -> str:
    """Returns the Markdown model card of a published BiT module.

    Args:
        name: the published name, e.g. "bit/m-r50x1".
        version: the published version.
        metadata: from `hub_export.read_metadata` (kind, architecture and a classifier's
            `class_names`, which the card lists); may be empty.
        upstream: the pre-training data; guessed from BiT-S/M/L names when None.
        license_name: the license of the weights.
        description: an extra paragraph for the overview.

    Example:
        >>> card = model_card("bit/s-r50x1", 1, {"kind": "feature_vector"})
        >>> "## Fine-tuning" in card
        True
    """
    kind = metadata.get("kind", "feature_vector")
    width = metadata.get("width_factor")
    depth = _depth(metadata)
    architecture = (
        f"ResNet-v2 {depth}x{width}" if depth and width else "ResNet-v2 (see the variables)"
    )
    upstream = (
        upstream
        or _upstream_from_name(name.replace("-", "_"), metadata.get("model_name", ""))
        or "not recorded at export (pass upstream=)"
    )
    lines = [
        *_overview(name, version, kind, architecture, license_name, description),
        *_architecture_section(metadata, architecture, width),
        "## Upstream data",
        "",
        f"Pre-training data: {upstream}.",
        "",
        *_inputs_and_outputs(metadata, kind, width),
        *_classes_section(metadata.get("class_names") if kind == "classification" else None),
        *_USAGE,
        "## Fine-tuning",
        "",
        _hyperrule_paragraph(),
        "",
        "## License",
        "",
        f"{license_name}.",
        "",
        *_CITATION,
    ]
    return "\n".join(lines)


def _overview(name, version, kind, architecture, license_name, description) -> list[str]:
    """The title, the TF-Hub markers and the overview paragraph."""
    module_type = "image-classification" if kind == "classification" else "image-feature-vector"
    lines = [
        f"# {name} (version {version})",
        "",
        f"<!-- module-type: {module_type} -->",
        "<!-- format: saved_model_2 -->",
        "<!-- fine-tunable: true -->",
        f"<!-- license: {license_name} -->",
        "<!-- network-architecture: BiT -->",
        "",
        "## Overview",
        "",
        f"Big Transfer (BiT, Kolesnikov et al., 2020) {architecture} "
        f"{'classifier' if kind == 'classification' else 'feature extractor'}, exported by "
        "bit-tf as a TF2 Reusable SavedModel (TF-Hub format).",
    ]
    return [*lines, "", description, ""] if description else [*lines, ""]


def _architecture_section(metadata: dict, architecture: str, width) -> list[str]:
    """The network: normalization, weight standardization, units and width."""
    group = metadata.get("normalization", "group") == "group"
    standardized = metadata.get("weight_standardization", True)
    return [
        "## Architecture",
        "",
        f"- {architecture}: pre-activation ResNet (v2) with "
        + ("Group Normalization (32 groups)" if group else "no normalization")
        + (
            " and Weight Standardization in every convolution."
            if standardized
            else " and plain convolutions."
        ),
        f"- Units per block: {tuple(metadata.get('units_per_block', ())) or 'n/a'}; "
        f"width factor: {width or 'n/a'}.",
        "- Variables carry the official BiT checkpoint names (`resnet/block1/unit01/...`).",
        "",
    ]


def _inputs_and_outputs(metadata: dict, kind: str, width) -> list[str]:
    """What the module takes and gives: logits of a classifier, else the feature vector."""
    if kind == "classification":
        num_classes = metadata.get("num_classes")
        output = f"`[batch, {num_classes or 'classes'}]` float32 logits (apply softmax)."
    else:
        features = 2048 * width if width else "2048 * width"
        if metadata.get("unit") == "basic" and width:
            features = 512 * width
        output = f"`[batch, {features}]` float32 feature vectors (the pre-logits)."
    return [
        "## Inputs and outputs",
        "",
        "- Input: float32 images `[batch, height, width, 3]`, RGB, values in [0, 1]; any "
        "height and width (the module rescales to [-1, 1] itself).",
        f"- Output: {output}",
        "- `__call__(images, training=False)`; attributes `variables`, `trainable_variables`, "
        "`regularization_losses`; signature `serving_default`.",
        "",
    ]


#: How to load the module, in Keras 3 and in tf_keras.
_USAGE = [
    "## Usage",
    "",
    "Keras 3:",
    "",
    "```python",
    "import keras, bit_tf",
    "inputs = keras.Input((128, 128, 3))",
    "features = bit_tf.HubLayer(HANDLE, trainable=True)(inputs)",
    "model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(features))",
    "```",
    "",
    "tf_keras (Keras 2):",
    "",
    "```python",
    "import tensorflow_hub as hub, tf_keras",
    "model = tf_keras.Sequential([hub.KerasLayer(HANDLE, trainable=True),",
    "                             tf_keras.layers.Dense(NUM_CLASSES)])",
    "```",
    "",
]
_CITATION = [
    "## Citation",
    "",
    "Kolesnikov, Beyer, Zhai, Puigcerver, Yung, Gelly, Houlsby. Big Transfer (BiT): "
    "General Visual Representation Learning. ECCV 2020.",
    "",
]
