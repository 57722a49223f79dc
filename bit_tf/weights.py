"""Official BiT checkpoints (`BiT-M-R50x1.npz` and friends) <-> Keras weights.

The official key names live here and nowhere else: `official_variables` maps each key of the
released layout to the model variable it fills.

Example:
    >>> import bit_tf
    >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=None)
    >>> bit_tf.load_official_weights(model, "BiT-M-R50x1.npz")
    >>> bit_tf.save_official_weights(model, "copy.npz")
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import urllib.parse
import zipfile
import zlib

import keras
import numpy as np

from bit_tf.download import download
from bit_tf.layers import PreActBasic, PreActBottleneck, StandardizedConv2D
from bit_tf.registry import RELEASES, find_release, parse_model_name

log = logging.getLogger(__name__)

# The authors' public bucket; BIT_TF_WEIGHTS_URL points name look-ups at a mirror instead.
OFFICIAL_BASE_URL = "https://storage.googleapis.com/bit_models"
HEAD_KERNEL = "resnet/head/conv2d/kernel"
HEAD_BIAS = "resnet/head/conv2d/bias"
HEAD_KEYS = (HEAD_KERNEL, HEAD_BIAS)
_UNIT_NAME = re.compile(r"^(block\d+)_(unit\d+)$")
ROOT_KERNELS = (
    "resnet/root_block/standardized_conv2d/kernel",
    "resnet/root_block/conv2d/kernel",
)
_UNIT_KEY = re.compile(r"^resnet/block(\d+)/unit(\d+)/")
_SHOWN = 10


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the model."""


def _norm_keys(prefix: str, layer) -> dict:
    if layer is None or not layer.weights:  # no normalization: a ReLU alone
        return {}
    if isinstance(layer, keras.layers.GroupNormalization):
        group = f"{prefix}/group_norm"
        names = ("gamma", "beta")
    elif isinstance(layer, keras.layers.BatchNormalization):
        group = f"{prefix}/batch_norm"
        names = ("gamma", "beta", "moving_mean", "moving_variance")
    else:
        raise CheckpointError(f"No official key layout for normalization layer {layer.name!r}.")
    return {
        f"{group}/{name}": getattr(layer, name)
        for name in names
        if getattr(layer, name, None) is not None
    }


def _conv_key(prefix: str, layer) -> dict:
    kind = "standardized_conv2d" if isinstance(layer, StandardizedConv2D) else "conv2d"
    return {f"{prefix}/{kind}/kernel": layer.kernel}


def _unit_keys(prefix: str, unit) -> dict:
    keys = {}
    keys.update(_norm_keys(f"{prefix}/a", unit.norm_a))
    keys.update(_conv_key(f"{prefix}/a", unit.conv_a))
    if unit.projection is not None:
        keys.update(_conv_key(f"{prefix}/a/proj", unit.projection))
    keys.update(_norm_keys(f"{prefix}/b", unit.norm_b))
    keys.update(_conv_key(f"{prefix}/b", unit.conv_b))
    if isinstance(unit, PreActBottleneck):
        keys.update(_norm_keys(f"{prefix}/c", unit.norm_c))
        keys.update(_conv_key(f"{prefix}/c", unit.conv_c))
    return keys


def official_variables(model: keras.Model) -> dict:
    """Maps every official checkpoint key to the model variable it fills.

    Works for models made by `bit_tf.create_model` / `bit_tf.models.resnet_v2`. The head
    kernel is stored as a (1, 1, features, classes) convolution in the official files and
    as a (features, classes) Dense kernel here; `load_official_weights` reshapes it.

    Example:
        >>> sorted(official_variables(model))[:1]
        ['resnet/block1/unit01/a/group_norm/beta']
    """
    keys: dict = {}
    for layer in model.layers:
        if layer.name == "root_conv":
            keys.update(_conv_key("resnet/root_block", layer))
        elif isinstance(layer, (PreActBottleneck, PreActBasic)):
            match = _UNIT_NAME.match(layer.name)
            if not match:
                raise CheckpointError(f"Unit layer {layer.name!r} is not named blockN_unitMM.")
            keys.update(_unit_keys(f"resnet/{match.group(1)}/{match.group(2)}", layer))
        elif layer.name == "pre_head_norm":
            keys.update(_norm_keys("resnet", layer))
        elif layer.name == "head":
            keys[HEAD_KERNEL] = layer.kernel
            keys[HEAD_BIAS] = layer.bias
    if not any(key.startswith("resnet/root_block/") for key in keys):
        raise CheckpointError(
            f"Model {model.name!r} is not a BiT ResNetV2 built by bit_tf (no 'root_conv' layer); "
            "build it with bit_tf.create_model."
        )
    return keys


def official_name(variable_name: str) -> str:
    """The official checkpoint key inside a SavedModel variable name.

    Strips the ":0" suffix and anything before the first "resnet/" (a scope a module may add).

    Example:
        >>> official_name("module/resnet/head/conv2d/bias:0")
        'resnet/head/conv2d/bias'
    """
    name = variable_name.split(":")[0]
    start = name.find("resnet/")
    return name[start:] if start >= 0 else name


def describe_layout(shapes: dict) -> dict:
    """Infers a BiT architecture from official key names and their shapes.

    Args:
        shapes: official key -> shape, as in a released `.npz` or a BiT hub module.

    Returns:
        A dict with `units_per_block`, `width_factor`, `num_classes` (None without a head),
        `unit` ("bottleneck" or "basic"), `weight_standardization` and `normalization`,
        ready for `bit_tf.models.resnet_v2`.

    Raises:
        CheckpointError: the names are not those of a BiT ResNetV2.

    Example:
        >>> describe_layout({k: v.shape for k, v in np.load("BiT-M-R50x1.npz").items()})
        {'units_per_block': (3, 4, 6, 3), 'width_factor': 1, 'num_classes': 21843, ...}
    """
    root = next((key for key in ROOT_KERNELS if key in shapes), None)
    if root is None:
        shown = ", ".join(sorted(shapes)[:5]) or "no variables"
        raise CheckpointError(
            f"Not a BiT module: no root convolution ({' or '.join(ROOT_KERNELS)}) among the "
            f"variable names ({shown}, ...). Export it with hub_export.export_module, or use "
            "a module whose variables carry the official BiT checkpoint names."
        )
    root_channels = int(shapes[root][-1])
    if root_channels % 64:
        raise CheckpointError(f"Root convolution {root} has {root_channels} channels, not 64*k.")
    units: dict[int, set] = {}
    for key in shapes:
        match = _UNIT_KEY.match(key)
        if match:
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    blocks = sorted(units)
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        raise CheckpointError(f"BiT blocks must be numbered 1..N, found blocks {blocks}.")
    for block in blocks:
        if sorted(units[block]) != list(range(1, len(units[block]) + 1)):
            raise CheckpointError(
                f"Units of block {block} must be numbered 01..N, found {sorted(units[block])}."
            )
    bottleneck = any(key.startswith("resnet/block1/unit01/c/") for key in shapes)
    if any("/batch_norm/" in key for key in shapes):
        normalization = "batch"
    elif any("/group_norm/" in key for key in shapes):
        normalization = "group"
    else:
        normalization = "none"
    num_classes = None
    if HEAD_KERNEL in shapes:
        num_classes = int(shapes[HEAD_KERNEL][-1])
    return {
        "units_per_block": tuple(len(units[block]) for block in blocks),
        "width_factor": root_channels // 64,
        "num_classes": num_classes,
        "unit": "bottleneck" if bottleneck else "basic",
        "weight_standardization": root.endswith("standardized_conv2d/kernel"),
        "normalization": normalization,
    }


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a BiT `.npz` safely (no pickles) into float32 arrays under the official key names
    (`in_official_layout`).

    Raises:
        CheckpointError: the file is missing, damaged, holds object arrays, or non-numbers.

    Example:
        >>> arrays = read_checkpoint("BiT-M-R50x1.npz")
        >>> arrays["resnet/root_block/standardized_conv2d/kernel"].shape
        (7, 7, 3, 64)
    """
    if not os.path.isfile(path):
        what = "is a folder, not a .npz file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"Checkpoint file {path!r} {what}.")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CheckpointError(
                    f"Checkpoint {path!r} is a single array, not an .npz archive of named arrays."
                )
            for key in archive.files:
                try:
                    array = archive[key]
                except ValueError as error:
                    if "allow_pickle" in str(error):
                        raise CheckpointError(
                            f"Checkpoint {path!r} holds a pickled object array under key {key!r}; "
                            "refusing to unpickle it (pickles can run code). Official "
                            "checkpoints hold plain float arrays."
                        ) from None
                    raise
                if not np.issubdtype(array.dtype, np.number):
                    raise CheckpointError(
                        f"Checkpoint {path!r} key {key!r} has dtype {array.dtype}, not numbers."
                    )
                arrays[key] = array.astype(np.float32, copy=False)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError, KeyError) as error:
        raise CheckpointError(
            f"Checkpoint {path!r} is damaged or not an .npz file ({type(error).__name__}: "
            f"{error}); download it again."
        ) from None
    return in_official_layout(arrays)


# big_vision's names (`big_vision/models/bit_paper.py`) for the parts of a unit: its first,
# second and third GroupNorm and convolution are the official "a", "b" and "c".
_BIG_VISION_UNIT_PARTS = {"1": "a", "2": "b", "3": "c"}
_BIG_VISION_UNIT_KEY = re.compile(r"^(block\d+)/(unit\d+)/(conv|gn)([123])/(kernel|scale|bias)$")
_NUMBERED_CONVOLUTION = re.compile(r"/standardized_conv2d_\d+/")


def in_official_layout(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of a BiT checkpoint under the official key names.

    The authors' files come in two layouts: the official one (`resnet/block1/unit01/a/...`),
    some of whose files number their convolutions (`standardized_conv2d_1`), and big_vision's
    (`block1/unit01/conv1/kernel`, `gn1/scale`, `norm-pre-head`, `head/kernel`), which the
    authors' own loader (big_vision's `bit_paper.load`) also accepts for their BiT files. Both
    come out in the official layout; other keys are kept as they are.

    Example:
        >>> sorted(in_official_layout({"root_block/conv_root/kernel": kernel}))
        ['resnet/root_block/standardized_conv2d/kernel']
    """
    arrays = {
        _NUMBERED_CONVOLUTION.sub("/standardized_conv2d/", key): value
        for key, value in arrays.items()
    }
    if any(key.startswith("resnet/") for key in arrays):
        return arrays
    official = {}
    for key, value in arrays.items():
        name = key.removeprefix("params/")
        official_key = _official_name_of_big_vision_key(name)
        if official_key is None:
            official[key] = value
            continue
        if official_key.endswith(("/gamma", "/beta")):
            value = value.reshape(value.shape[-1:])
        elif official_key == HEAD_KERNEL:
            value = value.reshape((1, 1, *value.shape[-2:]))
        official[official_key] = value
    return official


def _official_name_of_big_vision_key(name: str) -> str | None:
    fixed = {
        "root_block/conv_root/kernel": ROOT_KERNELS[0],
        "norm-pre-head/scale": "resnet/group_norm/gamma",
        "norm-pre-head/bias": "resnet/group_norm/beta",
        "head/kernel": HEAD_KERNEL,
        "head/bias": HEAD_BIAS,
    }
    if name in fixed:
        return fixed[name]
    if name.endswith("/conv_proj/kernel"):
        unit = name.removesuffix("/conv_proj/kernel")
        return f"resnet/{unit}/a/proj/standardized_conv2d/kernel"
    match = _BIG_VISION_UNIT_KEY.match(name)
    if match is None:
        return None
    block, unit, kind, index, variable = match.groups()
    part = f"resnet/{block}/{unit}/{_BIG_VISION_UNIT_PARTS[index]}"
    if kind == "conv":
        return f"{part}/standardized_conv2d/kernel" if variable == "kernel" else None
    return f"{part}/group_norm/{'gamma' if variable == 'scale' else 'beta'}"


def checkpoint_num_classes(arrays: dict[str, np.ndarray]) -> int | None:
    """The classes of a checkpoint's head (read with `read_checkpoint`); None without a head.

    Example:
        >>> checkpoint_num_classes(read_checkpoint("BiT-M-R50x1-ILSVRC2012.npz"))
        1000
    """
    if HEAD_KERNEL not in arrays:
        return None
    return int(arrays[HEAD_KERNEL].shape[-1])


def released_url(name: str) -> str:
    """The URL of a released checkpoint: its file (`bit_tf.registry.RELEASES`) under the
    authors' bucket, or under `$BIT_TF_WEIGHTS_URL`, a mirror of the same layout.

    Example:
        >>> released_url("BiT-R50x1-distilled-224")
        'https://storage.googleapis.com/bit_models/distill/R50x1_224.npz'
    """
    release = find_release(name)
    if release is None:
        raise CheckpointError(f"{name!r} is not a released checkpoint name.")
    base_url = os.environ.get("BIT_TF_WEIGHTS_URL", OFFICIAL_BASE_URL).rstrip("/")
    return f"{base_url}/{release.file}"


def resolve_checkpoint(path_or_url: str) -> str:
    """Turns a released name, a URL or a path into a local file path, downloading if needed.

    Released names (`bit_tf.list_released_checkpoints()`) are cached under their own name.

    Example:
        >>> resolve_checkpoint("BiT-M-R50x1")   # downloads once, then reads the cache
        '/home/me/.keras/models/bit_tf/BiT-M-R50x1.npz'
        >>> resolve_checkpoint("BiT-M-R50x1-run0-caltech101")
        '/home/me/.keras/models/bit_tf/BiT-M-R50x1-run0-caltech101.npz'
    """
    path_or_url = os.fspath(path_or_url)
    scheme = urllib.parse.urlparse(path_or_url).scheme
    if scheme in ("http", "https", "file"):
        return download(path_or_url)
    if os.path.exists(path_or_url) or path_or_url.endswith(".npz") or os.sep in path_or_url:
        return path_or_url
    name = path_or_url
    if find_release(name) is None:
        try:
            parse_model_name(name)
            reason = "is a valid architecture, but the authors released no checkpoint for it"
        except ValueError:
            reason = "is neither a file, a URL, nor a released checkpoint name"
        examples = ", ".join(
            ["BiT-M-R50x1", "BiT-M-R50x1-ILSVRC2012", "BiT-M-R50x1-run0-caltech101"]
            + ["BiT-R50x1-distilled-224", "BiT-M-R152x2-teacher-384"]
        )
        raise CheckpointError(
            f"Weights {name!r} {reason}. The {len(RELEASES)} released names (e.g. {examples}) "
            "are listed by bit_tf.list_released_checkpoints()."
        )
    return download(released_url(name), file_name=f"{name}.npz")


def _list(items: list) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def load_official_weights(model: keras.Model, path_or_url: str) -> keras.Model:
    """Loads an official-layout BiT checkpoint into a model built by bit_tf, by key name.

    Every backbone variable must be in the file with its shape; otherwise one error lists the
    missing keys, the unexpected keys and the shape mismatches. The head is loaded only when
    the model has one of the same shape; otherwise it stays zero (as in BiT fine-tuning) and
    a log line says so.

    Args:
        model: from `bit_tf.create_model` or `bit_tf.models.resnet_v2`.
        path_or_url: a local `.npz`, an http(s) URL, or a released name like "BiT-M-R50x1".

    Returns:
        The model, for chaining.

    Raises:
        CheckpointError: unreadable or unsafe file, or keys and shapes that do not fit.

    Example:
        >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=10)
        >>> bit_tf.load_official_weights(model, "BiT-M-R50x1.npz")  # head stays zero
    """
    path = resolve_checkpoint(path_or_url)
    return assign_official_arrays(model, read_checkpoint(path), path)


def assign_official_arrays(model: keras.Model, arrays: dict, path: str) -> keras.Model:
    """`load_official_weights` for a checkpoint already read (`read_checkpoint(path)`): the
    same checks and messages, without reading the file again.

    Example:
        >>> arrays = read_checkpoint("BiT-M-R50x1.npz")
        >>> assign_official_arrays(model, arrays, "BiT-M-R50x1.npz")
    """
    expected = official_variables(model)
    backbone = {key: var for key, var in expected.items() if key not in HEAD_KEYS}

    missing = [key for key in backbone if key not in arrays]
    unexpected = [key for key in arrays if key not in expected and key not in HEAD_KEYS]
    mismatched = [
        f"{key}: file {arrays[key].shape} vs model {tuple(var.shape)}"
        for key, var in backbone.items()
        if key in arrays and arrays[key].shape != tuple(var.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_list(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_list(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_list(mismatched)}")
        raise CheckpointError(
            f"Checkpoint {path!r} does not fit model {model.name!r}: "
            + "; ".join(problems)
            + ". Is it the checkpoint of the same architecture (depth and width)?"
        )

    for key, variable in backbone.items():
        variable.assign(arrays[key].astype(variable.dtype))

    if HEAD_KERNEL in expected:
        _load_head(model, path, arrays, expected)
    return model


def _load_head(model, path, arrays, expected) -> None:
    kernel_var, bias_var = expected[HEAD_KERNEL], expected[HEAD_BIAS]
    if HEAD_KERNEL not in arrays or HEAD_BIAS not in arrays:
        log.info("Checkpoint %s has no head; the head of %s stays zero.", path, model.name)
        return
    kernel = arrays[HEAD_KERNEL]
    kernel = kernel.reshape(kernel.shape[-2:]) if kernel.ndim == 4 else kernel
    if kernel.shape != tuple(kernel_var.shape) or arrays[HEAD_BIAS].shape != tuple(bias_var.shape):
        log.info(
            "Checkpoint head %s does not fit the model head %s; the head stays zero-initialised.",
            kernel.shape,
            tuple(kernel_var.shape),
        )
        return
    kernel_var.assign(kernel.astype(kernel_var.dtype))
    bias_var.assign(arrays[HEAD_BIAS].astype(bias_var.dtype))


def official_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as official key -> float32 array, in the released layout (the head
    kernel as a (1, 1, features, classes) convolution).

    Example:
        >>> official_arrays(model)["resnet/root_block/standardized_conv2d/kernel"].shape
        (7, 7, 3, 64)
    """
    arrays = {}
    for key, variable in official_variables(model).items():
        value = np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)
        if key == HEAD_KERNEL:
            value = value.reshape((1, 1, *value.shape))
        arrays[key] = value
    return arrays


def save_official_weights(model: keras.Model, path: str) -> str:
    """Writes the model's weights in the official `.npz` layout, atomically.

    Example:
        >>> bit_tf.save_official_weights(model, "my-bit.npz")
        'my-bit.npz'
    """
    arrays = official_arrays(model)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
