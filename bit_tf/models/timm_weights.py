"""timm's BiT checkpoints (`model.safetensors` + `config.json`) <-> bit_tf models.

timm (huggingface/pytorch-image-models) publishes the authors' BiT checkpoints, converted, on the
Hugging Face Hub (`timm/resnetv2_50x1_bit.goog_in21k` and the others of
`bit_tf.list_released_checkpoints("timm")`): a `model.safetensors` in PyTorch's layout and the
`config.json` that `timm.create_model` reads. This module reads those files (no PyTorch needed:
`safetensors.numpy`) and writes them, so that a model fine-tuned here loads in timm.

The names: timm's key of each official key (`bit_tf.models.weights`) is made by one table here,
`TIMM_NAMES` and the unit parts below, in both directions. bit_tf's own variables are found by
`bit_tf.models.weights.official_variables`; this module renames and transposes, nothing more:

    official (bit_tf.models.weights)                        timm
    resnet/root_block/standardized_conv2d/kernel     stem.conv.weight
    resnet/block1/unit01/a/group_norm/gamma, beta    stages.0.blocks.0.norm1.weight, bias
    resnet/block1/unit01/a/standardized_conv2d/...   stages.0.blocks.0.conv1.weight
    (b and c: norm2/conv2 and norm3/conv3)
    resnet/block1/unit01/a/proj/standardized_...     stages.0.blocks.0.downsample.conv.weight
    resnet/group_norm/gamma, beta                    norm.weight, bias
    resnet/head/conv2d/kernel, bias                  head.fc.weight, bias

Convolution kernels are HWIO officially and OIHW in timm (timm's `_load_weights` transposes the
authors' `.npz` the same way); the head is a 1x1 convolution in both.

One difference in the model, not in the files: timm builds BiT's weight-standardized
convolutions with epsilon 1e-8 inside the square root (`_create_resnetv2_bit`), the authors and
bit_tf with 1e-10. A filter whose weights have variance `v` is scaled by
`sqrt((v + 1e-10) / (v + 1e-8))`, about `1 - 5e-9 / v`, in timm against bit_tf; the same weights
thus give slightly different outputs in the two, by an amount that depends on the checkpoint's
variances (benchmarks/RESULTS.md, "timm interoperability", measures it).

Example:
    >>> import bit_tf
    >>> weights = "hf-hub:timm/resnetv2_50x1_bit.goog_in21k"
    >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=5, weights=weights)
    >>> bit_tf.save_timm_weights(model, "exports/my-bit")  # model.safetensors + config.json
    'exports/my-bit/model.safetensors'
    >>> # In PyTorch: timm.create_model("local-dir:exports/my-bit", pretrained=True)
"""

from __future__ import annotations

import json
import logging
import os
import re

import keras
import numpy as np

from bit_tf.models import hf_hub
from bit_tf.models.registry import HF_HUB_PREFIX, TIMM_RELEASES, find_timm_release
from bit_tf.models.weights import (
    HEAD_BIAS,
    HEAD_KERNEL,
    ROOT_KERNELS,
    CheckpointError,
    assign_official_arrays,
    describe_layout,
    official_arrays,
    read_checkpoint,
    resolve_checkpoint,
)
from bit_tf.training.atomic import write_text, write_through

log = logging.getLogger(__name__)

#: The files of a timm checkpoint, in a Hub repository or a folder.
CHECKPOINT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The architectures timm can build (`timm.create_model`): those of its BiT releases.
TIMM_ARCHITECTURES = tuple(
    sorted({f"resnetv2_{r.depth}x{r.width}_bit" for r in TIMM_RELEASES.values()})
)
#: A config.json larger than this is not read (timm's are a few kB, or about 1 MB with the
#: names of 21843 classes).
MAX_CONFIG_BYTES = 64 << 20

# --- The names: official key <-> timm key --------------------------------------------------

#: timm's name of each official key outside the units.
TIMM_NAMES = {
    ROOT_KERNELS[0]: "stem.conv.weight",
    "resnet/group_norm/gamma": "norm.weight",
    "resnet/group_norm/beta": "norm.bias",
    HEAD_KERNEL: "head.fc.weight",
    HEAD_BIAS: "head.fc.bias",
}
_OFFICIAL_NAMES = {timm: official for official, timm in TIMM_NAMES.items()}
#: A unit's parts: the official "a", "b", "c" are timm's norm1/conv1, norm2/conv2, norm3/conv3.
_UNIT_PARTS = {"a": "1", "b": "2", "c": "3"}
_OFFICIAL_PARTS = {number: letter for letter, number in _UNIT_PARTS.items()}
#: GroupNorm's variables: official gamma and beta, timm's weight and bias.
_NORM_VARIABLES = {"gamma": "weight", "beta": "bias"}
_OFFICIAL_NORM_VARIABLES = {timm: official for official, timm in _NORM_VARIABLES.items()}
_OFFICIAL_UNIT_KEY = re.compile(
    r"^resnet/block(\d+)/unit(\d+)/([abc])/"
    r"(?:(proj/)?standardized_conv2d/kernel|group_norm/(gamma|beta))$"
)
_TIMM_UNIT_KEY = re.compile(
    r"^stages\.(\d+)\.blocks\.(\d+)\."
    r"(?:(downsample)\.conv\.weight|conv([123])\.weight|norm([123])\.(weight|bias))$"
)
_TIMM_ARCHITECTURE = re.compile(r"^resnetv2_(\d+)x(\d+)_bit$")
_SHOWN = 5


def timm_name(official_key: str) -> str:
    """timm's key of an official BiT key.

    Raises:
        CheckpointError: the key has no timm name (timm's BiT has GroupNorm and
            weight-standardized convolutions only).

    Example:
        >>> timm_name("resnet/block2/unit01/a/proj/standardized_conv2d/kernel")
        'stages.1.blocks.0.downsample.conv.weight'
    """
    if official_key in TIMM_NAMES:
        return TIMM_NAMES[official_key]
    match = _OFFICIAL_UNIT_KEY.match(official_key)
    if match is None:
        raise CheckpointError(
            f"No timm name for {official_key!r}: timm's BiT layout holds GroupNorm and "
            "weight-standardized convolutions only."
        )
    block, unit, part, projection, norm_variable = match.groups()
    prefix = f"stages.{int(block) - 1}.blocks.{int(unit) - 1}"
    if projection:
        return f"{prefix}.downsample.conv.weight"
    if norm_variable:
        return f"{prefix}.norm{_UNIT_PARTS[part]}.{_NORM_VARIABLES[norm_variable]}"
    return f"{prefix}.conv{_UNIT_PARTS[part]}.weight"


def official_name_of_timm_key(key: str) -> str | None:
    """The official key of timm's key `key`, or None for a key of no BiT layer.

    Example:
        >>> official_name_of_timm_key("stages.0.blocks.2.norm3.bias")
        'resnet/block1/unit03/c/group_norm/beta'
    """
    if key in _OFFICIAL_NAMES:
        return _OFFICIAL_NAMES[key]
    match = _TIMM_UNIT_KEY.match(key)
    if match is None:
        return None
    stage, block, downsample, conv_part, norm_part, norm_variable = match.groups()
    prefix = f"resnet/block{int(stage) + 1}/unit{int(block) + 1:02d}"
    if downsample:
        return f"{prefix}/a/proj/standardized_conv2d/kernel"
    if conv_part:
        return f"{prefix}/{_OFFICIAL_PARTS[conv_part]}/standardized_conv2d/kernel"
    variable = _OFFICIAL_NORM_VARIABLES[norm_variable]
    return f"{prefix}/{_OFFICIAL_PARTS[norm_part]}/group_norm/{variable}"


def to_timm_layout(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Official-layout arrays (`bit_tf.models.weights.official_arrays`) under timm's keys, kernels
    transposed from HWIO to OIHW (contiguous float32, ready for `safetensors.numpy`).

    Example:
        >>> to_timm_layout(official_arrays(model))["stem.conv.weight"].shape
        (64, 3, 7, 7)
    """
    tensors = {}
    for key, value in arrays.items():
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        tensors[timm_name(key)] = np.ascontiguousarray(value)
    return tensors


def from_timm_layout(tensors: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """timm-layout arrays under the official keys, kernels from OIHW to HWIO, as float32.

    A head stored as a Linear layer ((classes, features), as timm builds it with
    `use_conv=False`) comes out as the official (1, 1, features, classes) convolution.

    Raises:
        CheckpointError: a key of no BiT layer, or values that are not floating point numbers.

    Example:
        >>> from_timm_layout({"norm.weight": np.ones(2048)}, "x")["resnet/group_norm/gamma"].shape
        (2048,)
    """
    arrays, unknown = {}, []
    for key, value in tensors.items():
        official = official_name_of_timm_key(key)
        if official is None:
            unknown.append(key)
            continue
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"Checkpoint {where!r} key {key!r} has dtype {value.dtype}.")
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif official == HEAD_KERNEL and value.ndim == 2:
            value = value.T.reshape((1, 1, *value.T.shape))
        arrays[official] = value.astype(np.float32, copy=False)
    if unknown:
        shown = ", ".join(sorted(unknown)[:_SHOWN])
        raise CheckpointError(
            f"Checkpoint {where!r} is not a timm BiT checkpoint: {len(unknown)} key(s) of no "
            f"BiT layer ({shown}{', ...' if len(unknown) > _SHOWN else ''}). timm's BiT models "
            f"are {', '.join(TIMM_ARCHITECTURES)}."
        )
    return arrays


# --- Reading ---------------------------------------------------------------------------------


def read_timm_config(path: str) -> dict:
    """A timm `config.json` as a dict, read safely.

    Raises:
        CheckpointError: unreadable, too large, not JSON, or not a JSON object.

    Example:
        >>> read_timm_config("exports/my-bit/config.json")["architecture"]
        'resnetv2_50x1_bit'
    """
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{path!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a timm config.json."
            )
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read {path!r} as JSON ({error}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path!r} holds a {type(config).__name__}, not a timm config.")
    return config


def check_timm_config(config: dict, where: str) -> None:
    """Refuses a timm config whose architecture is not one of timm's BiT models.

    Raises:
        CheckpointError: naming the architecture the config says.

    Example:
        >>> check_timm_config({"architecture": "vit_base_patch16_224"}, "config.json")
        Traceback (most recent call last):
        CheckpointError: config.json describes 'vit_base_patch16_224', not a BiT ...
    """
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not _TIMM_ARCHITECTURE.match(architecture):
        raise CheckpointError(
            f"{where} describes {architecture!r}, not a BiT: timm's BiT models are "
            f"resnetv2_<depth>x<width>_bit ({', '.join(TIMM_ARCHITECTURES)}). bit_tf reads "
            "BiT checkpoints only."
        )


def _config_classes(config: dict) -> int | None:
    classes = config.get("num_classes")
    if classes is None and isinstance(config.get("pretrained_cfg"), dict):
        classes = config["pretrained_cfg"].get("num_classes")
    return classes if isinstance(classes, int) and not isinstance(classes, bool) else None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(
            f"Checkpoint {path!r} is damaged or not a safetensors file readable with numpy "
            f"({type(error).__name__}: {error}); download it again, or save it as float32."
        ) from None


def read_timm_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a timm BiT `model.safetensors` (and the `config.json` beside it, if any) into
    float32 arrays under the official key names, as `bit_tf.models.weights.read_checkpoint` reads an
    `.npz`.

    Raises:
        CheckpointError: a missing or damaged file, a config of another architecture or of
            another head, or keys of no BiT layer.

    Example:
        >>> arrays = read_timm_checkpoint("exports/my-bit/model.safetensors")
        >>> arrays["resnet/root_block/standardized_conv2d/kernel"].shape
        (7, 7, 3, 64)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a .safetensors file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"Checkpoint file {path!r} {what}.")
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_FILE)
    config = None
    if os.path.isfile(config_path):
        config = read_timm_config(config_path)
        check_timm_config(config, config_path)
    arrays = from_timm_layout(_read_safetensors(path), path)
    describe_layout({key: value.shape for key, value in arrays.items()})  # a whole BiT?
    classes = None if config is None else _config_classes(config)
    found = int(arrays[HEAD_KERNEL].shape[-1]) if HEAD_KERNEL in arrays else 0
    if classes is not None and classes != found:
        raise CheckpointError(
            f"{config_path!r} says num_classes={classes}, but {path!r} has a head of {found} "
            "classes: the two files do not belong together."
        )
    return arrays


def resolve_timm_checkpoint(weights: str) -> str | None:
    """The local `model.safetensors` that `weights` names, downloaded if need be, or None when
    `weights` is no timm checkpoint.

    timm checkpoints are named as "hf-hub:<owner>/<name>[@revision]", by one of timm's release
    names ("resnetv2_50x1_bit.goog_in21k", `bit_tf.list_released_checkpoints("timm")`), or as
    a path ending in `.safetensors`. From the Hub, `config.json` comes first, so that a
    repository of another architecture is refused before its weights are downloaded.

    Raises:
        CheckpointError: a malformed reference, or a config of another architecture.
        bit_tf.models.download.DownloadError: the download failed (one line, see
            `bit_tf.models.hf_hub`).

    Example:
        >>> resolve_timm_checkpoint("resnetv2_50x1_bit.goog_in21k")
        '/home/me/.cache/huggingface/hub/models--timm--resnetv2_50x1_bit.goog_in21k/snapshots/...'
        >>> resolve_timm_checkpoint("BiT-M-R50x1") is None
        True
    """
    if not isinstance(weights, (str, os.PathLike)):
        return None
    weights = os.fspath(weights)
    release = find_timm_release(weights)
    if release is not None:
        weights = f"{HF_HUB_PREFIX}{release.repo_id}"
    if not hf_hub.is_reference(weights):
        return weights if weights.endswith(".safetensors") else None
    try:
        repo_id, revision = hf_hub.parse_reference(weights)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    config_path = hf_hub.download_file(repo_id, CONFIG_FILE, revision, missing_ok=True)
    if config_path is not None:
        check_timm_config(read_timm_config(config_path), f"{weights} ({CONFIG_FILE})")
    return hf_hub.download_file(repo_id, CHECKPOINT_FILE, revision)


def read_weights(weights: str) -> tuple[str, dict[str, np.ndarray]]:
    """(local path, official-layout arrays) of any weights bit_tf reads: a timm checkpoint
    (`resolve_timm_checkpoint`), else an authors' released name, `.npz` path or URL
    (`bit_tf.models.weights.resolve_checkpoint`).

    Example:
        >>> path, arrays = read_weights("hf-hub:timm/resnetv2_50x1_bit.goog_in21k")
        >>> bit_tf.models.weights.checkpoint_num_classes(arrays)
        21843
    """
    path = resolve_timm_checkpoint(weights)
    if path is not None:
        return path, read_timm_checkpoint(path)
    path = resolve_checkpoint(weights)
    return path, read_checkpoint(path)


def load_timm_weights(model: keras.Model, weights: str) -> keras.Model:
    """Loads a timm BiT checkpoint into a model built by bit_tf, by key name, with the checks
    of `bit_tf.load_official_weights` (the head loads when it has the model's shape).

    Args:
        model: from `bit_tf.create_model` or `bit_tf.models.resnet_v2`.
        weights: "hf-hub:<owner>/<name>[@revision]", a timm release name, or a path of a
            `.safetensors` file.

    Example:
        >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=10)
        >>> load_timm_weights(model, "hf-hub:timm/resnetv2_50x1_bit.goog_in21k")  # head stays 0
    """
    path = resolve_timm_checkpoint(weights)
    if path is None:
        raise CheckpointError(
            f"{weights!r} is no timm checkpoint: give 'hf-hub:<owner>/<name>', a timm release "
            "name (bit_tf.list_released_checkpoints('timm')) or a .safetensors path."
        )
    return assign_official_arrays(model, read_timm_checkpoint(path), path)


# --- Writing ---------------------------------------------------------------------------------


def timm_architecture(layout: dict) -> str:
    """timm's architecture name for a layout of `bit_tf.models.weights.describe_layout`:
    "resnetv2_<depth>x<width>_bit", depth counting the weighted layers as BiT's names do.

    Example:
        >>> timm_architecture({"units_per_block": (3, 4, 6, 3), "width_factor": 1,
        ...                    "unit": "bottleneck"})
        'resnetv2_50x1_bit'
    """
    layers_per_unit = 3 if layout["unit"] == "bottleneck" else 2
    depth = layers_per_unit * sum(layout["units_per_block"]) + 2
    return f"resnetv2_{depth}x{layout['width_factor']}_bit"


def timm_config(
    model: keras.Model, arrays: dict[str, np.ndarray], image_size: int | None = None
) -> dict:
    """The `config.json` timm writes for a BiT model (timm's `save_config_for_hf` layout).

    Inputs are described as timm's BiT configurations do: mean and std 0.5 (images to [-1, 1],
    what bit_tf's models do inside), bilinear resizing, the whole image (crop_pct 1.0). The
    model's `class_names`, if it has them for its head, become timm's `label_names`.

    Args:
        model: the bit_tf model.
        arrays: its weights in the official layout (`bit_tf.models.weights.official_arrays`).
        image_size: the square input size to write; None: the model's fixed input size, else
            224 (timm's default).

    Example:
        >>> timm_config(model, official_arrays(model))["pretrained_cfg"]["input_size"]
        [3, 224, 224]
    """
    layout = describe_layout({key: value.shape for key, value in arrays.items()})
    height, width = model.input_shape[1:3]
    if image_size is None:
        image_size = height if height is not None and height == width else 224
    classes = layout["num_classes"] or 0
    pretrained_cfg = {
        "custom_load": False,
        "input_size": [3, image_size, image_size],
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": classes,
        "pool_size": [max(image_size // 32, 1)] * 2,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
    }
    config = {
        "architecture": timm_architecture(layout),
        "num_classes": classes,
        "num_features": int(arrays["resnet/group_norm/gamma"].shape[0]),
        "global_pool": "avg",
    }
    class_names = getattr(model, "class_names", None)
    if classes and class_names is not None and len(class_names) == classes:
        config["label_names"] = [str(name) for name in class_names]
    config["pretrained_cfg"] = pretrained_cfg
    return config


def save_timm_weights(
    model: keras.Model, folder: str, *, image_size: int | None = None, overwrite: bool = False
) -> str:
    """Writes the model as timm writes a checkpoint: `<folder>/model.safetensors` (timm's keys
    and layout, float32) and `<folder>/config.json`, each atomically.

    timm loads the folder with `timm.create_model("local-dir:<folder>", pretrained=True)`, or,
    uploaded to a Hub repository, with `timm.create_model("hf-hub:<owner>/<name>",
    pretrained=True)`; bit_tf reads it back with `weights="<folder>/model.safetensors"`. timm
    can build its BiT architectures only (`TIMM_ARCHITECTURES`); another one (such as R26x1) is
    written all the same, for bit_tf, with a warning.

    Args:
        model: a bit_tf BiT model (GroupNorm, weight standardization), with or without head.
        folder: where to write the two files (made if missing).
        image_size: the input size to write in the config (see `timm_config`).
        overwrite: replace existing files; otherwise they are an error.

    Returns:
        The path of `model.safetensors`.

    Raises:
        CheckpointError: the model is not a BiT timm can hold (batch normalization, no weight
            standardization).
        FileExistsError: a file to write exists and `overwrite` is False.

    Example:
        >>> bit_tf.save_timm_weights(model, "exports/my-bit")
        'exports/my-bit/model.safetensors'
    """
    from safetensors.numpy import save_file

    arrays = official_arrays(model)  # the model's variables, as bit_tf.models.weights finds them
    _check_timm_can_hold(model, arrays)
    tensors = to_timm_layout(arrays)
    config = timm_config(model, arrays, image_size)
    if config["architecture"] not in TIMM_ARCHITECTURES:
        log.warning(
            "timm has no %s (it builds %s): bit_tf reads the files, timm.create_model does not.",
            config["architecture"],
            ", ".join(TIMM_ARCHITECTURES),
        )
    folder = os.fspath(folder)
    checkpoint_path = os.path.join(folder, CHECKPOINT_FILE)
    config_path = os.path.join(folder, CONFIG_FILE)
    existing = [path for path in (checkpoint_path, config_path) if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; choose another folder, remove it, or pass "
            "overwrite=True to replace it."
        )
    write_through(checkpoint_path, lambda path: save_file(tensors, path, {"format": "pt"}))
    write_text(config_path, json.dumps(config, indent=2) + "\n")
    return checkpoint_path


def _check_timm_can_hold(model: keras.Model, arrays: dict) -> None:
    """Raises CheckpointError for a model timm's BiT layout cannot hold."""
    layout = describe_layout({key: value.shape for key, value in arrays.items()})
    if layout["normalization"] != "group" or not layout["weight_standardization"]:
        raise CheckpointError(
            f"Model {model.name!r} has {layout['normalization']} normalization"
            f"{'' if layout['weight_standardization'] else ' and no weight standardization'}: "
            "timm's BiT layout holds GroupNorm and weight-standardized convolutions only."
        )
