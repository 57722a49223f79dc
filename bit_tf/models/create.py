"""BiT models by name or from a checkpoint file: `create_model` and `from_checkpoint`.

`create_model("BiT-M-R50x1", weights=...)` builds the named architecture and loads the weights
into it. Without a name, `create_model(weights=...)` (that is, `from_checkpoint`) reads the
architecture and the head from the file itself: an official-layout `.npz` (its arrays' shapes),
timm's checkpoint (`.safetensors`, "hf-hub:<owner>/<name>", a timm release name) or a `.keras`
file bit_tf wrote (its own configuration).

Example:
    >>> import bit_tf
    >>> bit_tf.create_model(weights="BiT-M-R50x1-ILSVRC2012.npz").output_shape
    (None, 1000)
    >>> from_checkpoint("runs/pets/model.keras", num_classes=None).output_shape
    (None, 2048)
"""

from __future__ import annotations

import logging
import os

import keras

from bit_tf.models.class_names import released_head_class_names
from bit_tf.models.registry import (
    BASIC_DEPTHS,
    UNITS_PER_BLOCK,
    architecture,
    default_num_classes,
    parse_model_name,
)
from bit_tf.models.resnet_v2 import pre_logits_model, resnet_v2
from bit_tf.models.timm_weights import read_weights
from bit_tf.models.weights import (
    CheckpointError,
    assign_official_arrays,
    checkpoint_num_classes,
    checkpoint_shapes,
    describe_layout,
    official_variables,
)

log = logging.getLogger(__name__)

#: `num_classes` for "the checkpoint's head size, else the name's default".
FROM_CHECKPOINT = "checkpoint"
_DEFAULT = object()


class ArchitectureMismatchError(CheckpointError):
    """The model name asked for and the checkpoint file describe different architectures.

    `name`, `expected` (the name's architecture, e.g. "R50x1"), `path`, `found` (the file's)
    and `kind` ("checkpoint" or "model file") say which; `words(name_words, way_out)` phrases
    the same in the caller's terms (a command says "--model=...").

    Example:
        >>> try:
        ...     from_checkpoint("BiT-M-R50x1.npz", name="BiT-S-R26x1")
        ... except ArchitectureMismatchError as error:
        ...     print(error.found)
        R50x1
    """

    def __init__(self, name: str, expected: str, path: str, found: str, kind: str) -> None:
        self.name, self.expected, self.path, self.found, self.kind = (
            name,
            expected,
            path,
            found,
            kind,
        )
        super().__init__(self.words(f"name={name!r}", "leave out the name"))

    def words(self, name_words: str, way_out: str) -> str:
        """The message with the name as `name_words` and the first way out as `way_out`.

        Example:
            >>> error.words("--model=BiT-S-R26x1", "leave out --model")
        """
        message = (
            f"{name_words} ({self.expected}) does not fit the {self.kind} {self.path!r} "
            f"({self.found}): {way_out} to take the architecture from the {self.kind}"
        )
        if self.kind == "checkpoint":
            return f"{message}, or give the weights of a {self.name}."
        return f"{message}."


class HeadlessCheckpointError(ValueError):
    """The checkpoint's head was asked for (`FROM_CHECKPOINT`) and it has none, and no model
    name gives a default.

    Example:
        >>> from_checkpoint("BiT-M-R50x1-feature-vector.npz")  # raises HeadlessCheckpointError
    """


class HeadMismatchError(CheckpointError):
    """A `.keras` file's head has another number of classes than the one asked for
    (`classes`: the file's; `asked`: the caller's).

    Example:
        >>> from_checkpoint("runs/pets/model.keras", num_classes=10)  # a head of 37: raises
    """

    def __init__(self, path: str, classes: int, asked: int) -> None:
        self.path, self.classes, self.asked = path, classes, asked
        super().__init__(
            f"Model file {path!r} has a head of {classes} classes, not {asked}: pass "
            "num_classes='checkpoint' to keep its head."
        )


def create_model(
    name: str | None = None,
    num_classes: int | None = _DEFAULT,
    weights: str | None = None,
    input_shape: tuple = (None, None, 3),
    **kwargs,
) -> keras.Model:
    """Creates a BiT model by name, optionally with official (or own) weights; without a name,
    the model of the checkpoint in `weights` (`from_checkpoint`).

    The head follows the checkpoint: with `weights` and no `num_classes`, the model gets the
    head of the file (1000 classes for "BiT-M-R50x1-ILSVRC2012") and loads it. An explicit
    `num_classes` wins over a checkpoint's (`.npz`, timm's files): a head of another size then
    stays zero-initialised, as in fine-tuning. A `.keras` file is a whole model: its head is
    kept, and another `num_classes` than its own raises `HeadMismatchError` (None still gives
    its pre-logits).

    Args:
        name: "BiT-{S,M,L}-R{depth}x{width}", e.g. "BiT-M-R50x1" (see `list_models()`), or a
            released name such as "BiT-M-R50x1-ILSVRC2012", "BiT-M-R50x1-run0-caltech101" or
            "BiT-R50x1-distilled-224" (see `list_released_checkpoints()`), or timm's name of
            one, e.g. "resnetv2_50x1_bit.goog_in21k"; None: the architecture of `weights`.
        num_classes: the head size; by default that of the checkpoint in `weights`, else that
            of the name (a release's head; S: 1000, M: 21843, L: 18291). None gives the
            feature-vector model (pre-logits).
        weights: None (random backbone, zero head), a released name such as "BiT-M-R50x1",
            a path to an official-layout `.npz`, or an http(s) URL of one; or timm's
            checkpoints (`bit_tf.models.timm_weights`): "hf-hub:timm/resnetv2_50x1_bit.goog_in21k"
            (any "hf-hub:<owner>/<name>[@revision]"), a timm release name (see
            `list_released_checkpoints("timm")`), or a path to a `.safetensors` file; without
            a name also a `.keras` file bit_tf wrote.
        input_shape: (height, width, 3); None for any size.
        **kwargs: passed to `resnet_v2` (normalization, weight_standardization, and dtype,
            e.g. "mixed_bfloat16" for bfloat16 computation with float32 weights).

    Returns:
        A `keras.Model` taking float32 images in [0, 1], NHWC.

    Example:
        >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=5, weights="BiT-M-R50x1")
        >>> probabilities = keras.ops.softmax(model(images))
        >>> bit_tf.create_model("BiT-M-R50x1", weights="BiT-M-R50x1-ILSVRC2012").output_shape
        (None, 1000)
        >>> timm = "hf-hub:timm/resnetv2_50x1_bit.goog_in21k_ft_in1k"  # timm's copy, from the Hub
        >>> bit_tf.create_model("BiT-M-R50x1", weights=timm).output_shape
        (None, 1000)
        >>> bit_tf.create_model(weights="runs/pets/model.keras").output_shape
        (None, 37)
    """
    if name is None and weights is None:
        raise ValueError("create_model needs a model name, weights to read it from, or both.")
    # A .keras file is a whole model: read as it is, its architecture checked against `name`.
    if name is None or (isinstance(weights, str) and weights.lower().endswith(".keras")):
        head = FROM_CHECKPOINT if num_classes is _DEFAULT else num_classes
        return from_checkpoint(
            weights, name=name, num_classes=head, input_shape=input_shape, **kwargs
        )
    depth, width = architecture(name)
    path = arrays = None
    if weights is not None:
        path, arrays = read_weights(weights)  # the authors' .npz or timm's .safetensors
    if num_classes is _DEFAULT:
        from_file = None if arrays is None else checkpoint_num_classes(arrays)
        num_classes = from_file or default_num_classes(name)
    model = resnet_v2(
        depth,
        width_factor=width,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name.rsplit("/", 1)[-1].replace("-", "_").lower(),  # "hf-hub:timm/<name>": <name>
        **kwargs,
    )
    if arrays is not None:
        assign_official_arrays(model, arrays, path)
    return model


def from_checkpoint(
    weights: str,
    name: str | None = None,
    num_classes: int | None | str = FROM_CHECKPOINT,
    **kwargs,
) -> keras.Model:
    """The model of a checkpoint file, its architecture and head read from the file, with the
    weights loaded.

    Args:
        weights: an official-layout `.npz` (path, URL or released name), timm's checkpoint
            (`.safetensors`, "hf-hub:<owner>/<name>", a timm release name), or a `.keras`
            file bit_tf wrote (it keeps its own head and dtype policy).
        name: None; else a model name whose architecture the file must have.
        num_classes: `FROM_CHECKPOINT` for the file's head (else the default of `name`); None
            for the feature vector (pre-logits); a number for a head of that size (zero where
            the file's head has another size; a `.keras` file's head must have it).
        **kwargs: passed to `resnet_v2` (e.g. dtype="mixed_bfloat16", input_shape); not for
            `.keras` files.

    Returns:
        A bit_tf `keras.Model`; without `name`, named after the file. A head loaded from a
        checkpoint of a released head's size (1000 or 21843 classes) carries those class
        names (`bit_tf.models.class_names.released_head_class_names`).

    Raises:
        CheckpointError: the file is missing, damaged or not a BiT checkpoint;
            `ArchitectureMismatchError`: it does not fit `name`; `HeadMismatchError`: a
            `.keras` file's head does not fit `num_classes`.
        HeadlessCheckpointError: `FROM_CHECKPOINT` for a file without a head and no `name`.

    Example:
        >>> from_checkpoint("/data/BiT-M-R50x1.npz", num_classes=None).output_shape
        (None, 2048)
    """
    if os.fspath(weights).endswith(".keras"):
        return _from_keras_file(os.fspath(weights), name, num_classes)
    path, arrays = read_weights(weights)  # read once: the shapes, then the arrays
    layout = describe_layout(checkpoint_shapes(arrays))
    num_classes = _head_size(num_classes, layout, name, weights)
    if name:
        model = create_model(name, num_classes=num_classes, **kwargs)
        _check_architecture(name, model_layout(model), layout, weights, "checkpoint")
    else:
        stem = weights_stem(weights).replace("-", "_")
        model = resnet_v2(None, name=stem, **{**layout, "num_classes": num_classes, **kwargs})
    assign_official_arrays(model, arrays, path)
    if layout["num_classes"] is not None and layout["num_classes"] == num_classes:
        model.class_names = released_head_class_names(num_classes)
    return model


def _head_size(num_classes, layout: dict, name: str | None, weights: str) -> int | None:
    """`num_classes` with `FROM_CHECKPOINT` made a number: the file's head, else the name's."""
    if num_classes != FROM_CHECKPOINT:
        return num_classes
    if layout["num_classes"] is not None:
        return layout["num_classes"]
    if name:
        return default_num_classes(name)
    raise HeadlessCheckpointError(
        f"Checkpoint {weights!r} has no head to take the number of classes from; pass num_classes."
    )


def _check_architecture(name: str, expected: dict, found: dict, path: str, kind: str) -> None:
    """Raises `ArchitectureMismatchError` where the backbones of two layouts differ."""

    def backbone(layout: dict) -> dict:
        return {key: value for key, value in layout.items() if key != "num_classes"}

    if backbone(found) != backbone(expected):
        raise ArchitectureMismatchError(
            name, architecture_name(expected), path, architecture_name(found), kind
        )


def _from_keras_file(path: str, name: str | None, num_classes) -> keras.Model:
    """A `.keras` model bit_tf wrote (a fine-tuned `model.keras`, a run's `last.keras`)."""
    if not os.path.isfile(path):
        what = "is a folder, not a .keras file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"Model file {path!r} {what}.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # a damaged zip, a foreign model: all the user's file
        raise CheckpointError(
            f"Model file {path!r} cannot be read as a Keras model ({type(error).__name__}: "
            f"{error})."
        ) from error
    if name:
        _, depth, width = parse_model_name(name)
        expected = f"R{depth}x{width}"
        found = architecture_name(model_layout(model))
        if found != expected:
            raise ArchitectureMismatchError(name, expected, path, found, "model file")
    if num_classes is None:
        return pre_logits_model(model)
    if num_classes != FROM_CHECKPOINT and model.output_shape[-1] != num_classes:
        raise HeadMismatchError(path, model.output_shape[-1], num_classes)
    return model


def architecture_of(model: keras.Model) -> str:
    """The short name of a bit_tf model's architecture ("R152x4"), which the HyperRule's
    resolution looks for in a name.

    Example:
        >>> architecture_of(bit_tf.create_model("BiT-S-R50x1"))
        'R50x1'
    """
    return architecture_name(model_layout(model))


def model_layout(model: keras.Model) -> dict:
    """The architecture of a bit_tf model, as `bit_tf.models.weights.describe_layout` reads
    checkpoints.

    Example:
        >>> model_layout(bit_tf.create_model("BiT-S-R50x1"))["units_per_block"]
        (3, 4, 6, 3)
    """
    return describe_layout(
        {key: tuple(variable.shape) for key, variable in official_variables(model).items()}
    )


def architecture_name(layout: dict) -> str:
    """A short name of an architecture from `describe_layout`: "R50x1", or its units and width.

    Names like "R152x4" are what `bit_tf.finetune.hyperrule.get_resolution` looks for in a model
    name.

    Example:
        >>> architecture_name({"units_per_block": (3, 4, 6, 3), "width_factor": 1,
        ...                    "unit": "bottleneck", "normalization": "group",
        ...                    "weight_standardization": True})
        'R50x1'
    """
    units, width, unit = tuple(layout["units_per_block"]), layout["width_factor"], layout["unit"]
    name = next(
        (
            f"R{depth}x{width}"
            for depth, depth_units in UNITS_PER_BLOCK.items()
            if tuple(depth_units) == units and (depth in BASIC_DEPTHS) == (unit == "basic")
        ),
        f"ResNetV2 of {unit} units {units}, width {width}",
    )
    if layout["normalization"] != "group":
        name += f", {layout['normalization']} normalization"
    if not layout["weight_standardization"]:
        name += ", no weight standardization"
    return name


def weights_stem(weights: str) -> str:
    """The file or released name of `weights` without folder and .npz/.keras suffix.

    Example:
        >>> weights_stem("/data/BiT-M-R50x1.npz")
        'BiT-M-R50x1'
    """
    stem = os.path.basename(os.fspath(weights).rstrip("/"))
    for suffix in (".keras", ".npz", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem
