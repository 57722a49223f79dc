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
import math
import os
import re
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from bit_tf.models import file_kinds, registry
from bit_tf.models.download import download
from bit_tf.models.layers import PreActBasic, PreActBottleneck, StandardizedConv2D
from bit_tf.models.npz_file import READ_ERRORS, NpzError, NpzFile
from bit_tf.models.registry import RELEASES, depth_of, find_release, parse_model_name
from bit_tf.training.atomic import write_through

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


class Checkpoint(Mapping):
    """The arrays of a BiT checkpoint under the official key names, read one at a time.

    What `read_checkpoint` returns: a mapping of official key -> float32 array whose shapes are
    known without reading any data (`shapes`), and whose arrays are read from the file one by
    one as they are asked for, so that filling a model never holds more than one array besides
    the model. The file stays open until `close()` (or the end of a `with` block, or the object
    is dropped).

    Example:
        >>> with read_checkpoint("BiT-M-R50x1.npz") as arrays:
        ...     arrays.shapes["resnet/head/conv2d/kernel"]
        (1, 1, 2048, 21843)
    """

    def __init__(self, path: str, npz: NpzFile, plan: dict[str, tuple[str, tuple]]):
        self.path = path
        self._npz = npz
        self._plan = plan

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Official key -> shape, from the file's headers."""
        return {key: shape for key, (_, shape) in self._plan.items()}

    def __getitem__(self, key: str) -> np.ndarray:
        source, shape = self._plan[key]
        try:
            array = self._npz.read(source)
        except READ_ERRORS as error:
            raise CheckpointError(
                f"Checkpoint {self.path!r} is damaged: array {source!r} cannot be read "
                f"({type(error).__name__}: {error}); download it again."
            ) from None
        return array.reshape(shape).astype(np.float32, copy=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan)

    def __len__(self) -> int:
        return len(self._plan)

    def close(self) -> None:
        """Closes the file."""
        self._npz.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_checkpoint(path: str) -> Checkpoint:
    """Opens a BiT `.npz` safely (no pickles) as a `Checkpoint`: float32 arrays under the
    official key names (`in_official_layout`), read one at a time as they are asked for.

    The whole file is checked here: every member's header (numbers only, no object arrays), its
    size, and its checksum, in one pass that holds a few megabytes at a time.

    Raises:
        CheckpointError: the file is missing, damaged, holds object arrays or non-numbers, or
            is another kind of file (an HTML page, a `.keras` model, a single `.npy` array),
            which the message names.

    Example:
        >>> arrays = read_checkpoint("BiT-M-R50x1.npz")
        >>> arrays["resnet/root_block/standardized_conv2d/kernel"].shape
        (7, 7, 3, 64)
    """
    if not os.path.isfile(path):
        what = "is a folder, not a .npz file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"Checkpoint file {path!r} {what}.")
    try:
        kind = file_kinds.sniff(path)
    except OSError as error:
        raise CheckpointError(f"Checkpoint {path!r} cannot be read ({error}).") from None
    if kind not in (file_kinds.NPZ, file_kinds.ZIP):
        raise CheckpointError(not_a_checkpoint_message(path, kind))
    try:
        npz = NpzFile(path)
    except NpzError as error:
        raise CheckpointError(f"Checkpoint {path!r} {error}.") from None
    except READ_ERRORS as error:
        raise CheckpointError(
            f"Checkpoint {path!r} is damaged or not an .npz file ({type(error).__name__}: "
            f"{error}); download it again."
        ) from None
    try:
        npz.verify()
        plan = official_layout_plan(npz.shapes)
    except READ_ERRORS as error:
        npz.close()
        raise CheckpointError(
            f"Checkpoint {path!r} is damaged ({type(error).__name__}: {error}); download it again."
        ) from None
    except BaseException:
        npz.close()
        raise
    return Checkpoint(path, npz, plan)


def not_a_checkpoint_message(path: str, kind: str) -> str:
    """What to tell a user whose checkpoint `path` is a file of another `kind`
    (`bit_tf.models.file_kinds`).

    Example:
        >>> not_a_checkpoint_message("BiT-M-R50x1.npz", "html")[:60]
        "Checkpoint 'BiT-M-R50x1.npz' is an HTML page, not a checkpoi"
    """
    if kind == file_kinds.HTML:
        return (
            f"Checkpoint {path!r} is an HTML page, not a checkpoint (a login or error page "
            "saved in its place?); download the file again."
        )
    if kind == file_kinds.KERAS and path.lower().endswith(".keras"):
        return (
            f"Checkpoint {path!r} is a Keras model file, not an official .npz checkpoint: "
            f"load it whole with bit_tf.create_model(weights={path!r})."
        )
    if kind == file_kinds.KERAS:
        return (
            f"Checkpoint {path!r} is a Keras model file (.keras: a zip with config.json), not "
            "an official .npz checkpoint; give it a name ending in .keras to load it as one "
            "(as bit-finetune's model.keras loads)."
        )
    if kind == file_kinds.EMPTY:
        return f"Checkpoint {path!r} is empty; download it again."
    return (
        f"Checkpoint {path!r} is not an .npz file: it is {file_kinds.describe(kind)}. Official "
        "checkpoints are .npz archives of arrays."
    )


def checkpoint_shapes(arrays: Mapping) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint: from the headers of a `Checkpoint` (no data read), else from
    the arrays of a dict.

    Example:
        >>> describe_layout(checkpoint_shapes(read_checkpoint("BiT-M-R50x1.npz")))["width_factor"]
        1
    """
    if isinstance(arrays, Checkpoint):
        return arrays.shapes
    return {key: tuple(np.shape(value)) for key, value in arrays.items()}


# big_vision's names (`big_vision/models/bit_paper.py`) for the parts of a unit: its first,
# second and third GroupNorm and convolution are the official "a", "b" and "c".
_BIG_VISION_UNIT_PARTS = {"1": "a", "2": "b", "3": "c"}
_BIG_VISION_UNIT_KEY = re.compile(r"^(block\d+)/(unit\d+)/(conv|gn)([123])/(kernel|scale|bias)$")
_NUMBERED_CONVOLUTION = re.compile(r"/standardized_conv2d_\d+/")


def official_layout_plan(shapes: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Where each official key of a checkpoint comes from: official key -> (the file's key,
    the official shape). See `in_official_layout` for the layouts it reads.

    Raises:
        CheckpointError: an array whose size does not fit the official shape.

    Example:
        >>> official_layout_plan({"head/kernel": (2048, 10)})
        {'resnet/head/conv2d/kernel': ('head/kernel', (1, 1, 2048, 10))}
    """
    renamed = {_NUMBERED_CONVOLUTION.sub("/standardized_conv2d/", key): key for key in shapes}
    if any(key.startswith("resnet/") for key in renamed):
        return {name: (source, tuple(shapes[source])) for name, source in renamed.items()}
    plan = {}
    for name, source in renamed.items():
        shape = tuple(shapes[source])
        official_key = _official_name_of_big_vision_key(name.removeprefix("params/"))
        if official_key is None:
            plan[name] = (source, shape)
            continue
        if official_key.endswith(("/gamma", "/beta")):
            official_shape = shape[-1:]
        elif official_key == HEAD_KERNEL:
            official_shape = (1, 1, *shape[-2:])
        else:
            official_shape = shape
        if math.prod(official_shape) != math.prod(shape):
            raise CheckpointError(
                f"Checkpoint key {source!r} has shape {shape}, which does not fit "
                f"{official_key} (expected a shape like {official_shape})."
            )
        plan[official_key] = (source, official_shape)
    return plan


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
    plan = official_layout_plan({key: np.shape(value) for key, value in arrays.items()})
    return {key: np.reshape(arrays[source], shape) for key, (source, shape) in plan.items()}


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


def checkpoint_num_classes(arrays: Mapping) -> int | None:
    """The classes of a checkpoint's head (read with `read_checkpoint`); None without a head.

    Example:
        >>> checkpoint_num_classes(read_checkpoint("BiT-M-R50x1-ILSVRC2012.npz"))
        1000
    """
    shapes = checkpoint_shapes(arrays)
    if HEAD_KERNEL not in shapes or not shapes[HEAD_KERNEL]:
        return None
    return int(shapes[HEAD_KERNEL][-1])


def released_url(name: str) -> str:
    """The URL of a released checkpoint: its file (`bit_tf.models.registry.RELEASES`) under the
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

    Downloads are cached by their whole URL (`bit_tf.models.download`); released names from the
    authors' bucket keep their own name in the cache (`~/.keras/models/bit_tf/BiT-M-R50x1.npz`),
    those from a `BIT_TF_WEIGHTS_URL` mirror go under their URL's key. A released name's file
    must hold what the name says (`check_release`) before it is cached, and a cached file must
    still be the one downloaded (its recorded sha256) on every use.

    Raises:
        CheckpointError: an unknown name, or a file that is not the release it is served as.
        bit_tf.models.download.DownloadError: the file cannot be had, or has changed on the server.

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
    url = released_url(name)
    from_the_authors = url.startswith(OFFICIAL_BASE_URL + "/")
    return download(
        url,
        file_name=f"{name}.npz" if from_the_authors else None,
        verify=lambda path: check_release(path, name, url),
    )


def check_release(path: str, name: str, source: str | None = None) -> None:
    """Checks that the checkpoint at `path` is what the released `name` must hold: its
    architecture (the depth, from the units per block and their kind, and the width), GroupNorm
    with weight standardization, and the head size.

    Raises:
        CheckpointError: one line naming the file's architecture and head and the name's.

    Example:
        >>> check_release("downloads/BiT-S-R50x1.npz", "BiT-S-R50x1")  # passes, or raises:
        CheckpointError: The file served as BiT-S-R50x1 (downloads/BiT-S-R50x1.npz) is not that
        checkpoint: it holds an R18x1 with a 10-class head, where BiT-S-R50x1 is an R50x1 with a
        1000-class head. Nothing was cached.
    """
    release = find_release(name)
    served = f"The file served as {name} ({source or path})"
    try:
        with read_checkpoint(path) as arrays:
            layout = describe_layout(arrays.shapes)
    except CheckpointError as error:
        raise CheckpointError(f"{served} is not a BiT checkpoint: {error}") from None
    needed = {
        "units_per_block": registry.UNITS_PER_BLOCK[release.depth],
        "unit": "basic" if release.depth in registry.BASIC_DEPTHS else "bottleneck",
        "width_factor": release.width,
        "num_classes": release.num_classes,
        "normalization": "group",
        "weight_standardization": True,
    }
    if any(layout[key] != value for key, value in needed.items()):
        raise CheckpointError(
            f"{served} is not that checkpoint: it holds {_architecture_words(layout)}, where "
            f"{name} is {_architecture_words(needed)}. Nothing was cached."
        )


def _architecture_words(layout: dict) -> str:
    """A layout (`describe_layout`) in words: "an R18x1 with a 10-class head", or "a ResNetV2
    with (1, 1, 1, 1) bottleneck units per block, width 1 without a head" for a depth that has
    no name."""
    depth = depth_of(layout["units_per_block"], layout["unit"])
    if depth is not None:
        words = f"an R{depth}x{layout['width_factor']}"
    else:
        words = (
            f"a ResNetV2 with {tuple(layout['units_per_block'])} {layout['unit']} units per "
            f"block, width {layout['width_factor']}"
        )
    if layout["normalization"] != "group":
        words += f" with {layout['normalization']} normalization"
    if not layout["weight_standardization"]:
        words += " without weight standardization"
    classes = layout["num_classes"]
    return words + (f" with a {classes}-class head" if classes is not None else " without a head")


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


def assign_official_arrays(model: keras.Model, arrays: Mapping, path: str) -> keras.Model:
    """`load_official_weights` for a checkpoint already opened (`read_checkpoint(path)`, or a
    dict of arrays): the same checks and messages. The keys and shapes are checked first; then
    the arrays are read and assigned one at a time, so that no more than one of them is held
    besides the model.

    Example:
        >>> arrays = read_checkpoint("BiT-M-R50x1.npz")
        >>> assign_official_arrays(model, arrays, "BiT-M-R50x1.npz")
    """
    expected = official_variables(model)
    backbone = {key: var for key, var in expected.items() if key not in HEAD_KEYS}
    shapes = checkpoint_shapes(arrays)

    missing = [key for key in backbone if key not in shapes]
    unexpected = [key for key in shapes if key not in expected and key not in HEAD_KEYS]
    mismatched = [
        f"{key}: file {shapes[key]} vs model {tuple(var.shape)}"
        for key, var in backbone.items()
        if key in shapes and shapes[key] != tuple(var.shape)
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
        _assign(variable, arrays, key)

    if HEAD_KERNEL in expected:
        _load_head(model, path, arrays, shapes, expected)
    return model


#: Variables larger than this are written in blocks of rows of about this size.
_BLOCK_BYTES = 4 << 20


def _assign(variable, arrays: Mapping, key: str) -> None:
    """Fills `variable` with the checkpoint's array `key` (of the same size), read now.

    A large array (above `_HAND_OVER_BYTES`) is handed to the variable on the TensorFlow backend
    through DLPack, its own buffer (aligned, as `NpzFile` reads it) becoming the variable's,
    without a copy; a smaller one is copied into TensorFlow's memory, which reuses what the
    values it replaces free. Either way no more than one array is held besides the model.
    (A variable's slices are not assigned in place: on TensorFlow that switches it to copying
    its whole value on every read.)
    """
    value = np.reshape(arrays[key], tuple(variable.shape))
    if (
        value.nbytes > _HAND_OVER_BYTES
        and _tensorflow_variable(variable) is not None
        and _can_share(value, variable.dtype)
    ):
        import tensorflow as tf

        variable.assign(tf.experimental.dlpack.from_dlpack(value.__dlpack__()))
        return
    variable.assign(value.astype(variable.dtype, copy=False))


#: Arrays above this size are handed to their variable without a copy (`_assign`).
_HAND_OVER_BYTES = 32 << 20
#: The alignment TensorFlow's CPU kernels expect of a buffer they are handed.
_TENSORFLOW_ALIGNMENT = 64


def _can_share(value: np.ndarray, dtype) -> bool:
    """Whether `value` can become a variable's buffer as it is: the variable's dtype, one
    C-ordered block, writable, and aligned for TensorFlow."""
    try:
        same_dtype = value.dtype == np.dtype(dtype)
    except TypeError:  # a dtype NumPy does not know by that name ("bfloat16")
        return False
    return (
        same_dtype
        and value.size > 0
        and value.flags.c_contiguous
        and value.flags.writeable
        and value.ctypes.data % _TENSORFLOW_ALIGNMENT == 0
    )


def _value_blocks(variable) -> Iterator[np.ndarray]:
    """A variable's value as blocks of rows (its first axis), in order: slices of about
    `_BLOCK_BYTES` where `_tensorflow_variable` allows, else the whole value at once."""
    shape = tuple(variable.shape)
    tensorflow_variable = _tensorflow_variable(variable)
    if tensorflow_variable is None or not shape or math.prod(shape) * 4 <= _BLOCK_BYTES:
        yield keras.ops.convert_to_numpy(variable)
        return
    rows_per_block = max(1, _BLOCK_BYTES // (4 * math.prod(shape[1:])))
    for first in range(0, shape[0], rows_per_block):
        yield tensorflow_variable[first : first + rows_per_block].numpy()


def _tensorflow_variable(variable):
    """The TensorFlow variable behind a Keras variable, whose slices can be read without a
    copy of the whole (the TensorFlow backend, outside a tf.distribute strategy); else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    value = variable.value
    if isinstance(value, tf.Variable) and not isinstance(value, tf.distribute.DistributedValues):
        return value
    return None


def _load_head(model, path, arrays, shapes, expected) -> None:
    kernel_var, bias_var = expected[HEAD_KERNEL], expected[HEAD_BIAS]
    if HEAD_KERNEL not in shapes or HEAD_BIAS not in shapes:
        log.info("Checkpoint %s has no head; the head of %s stays zero.", path, model.name)
        return
    kernel_shape = shapes[HEAD_KERNEL]
    kernel_shape = kernel_shape[-2:] if len(kernel_shape) == 4 else kernel_shape
    if kernel_shape != tuple(kernel_var.shape) or shapes[HEAD_BIAS] != tuple(bias_var.shape):
        log.info(
            "Checkpoint head %s does not fit the model head %s; the head stays zero-initialised.",
            kernel_shape,
            tuple(kernel_var.shape),
        )
        return
    _assign(kernel_var, arrays, HEAD_KERNEL)
    _assign(bias_var, arrays, HEAD_BIAS)


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
    """Writes the model's weights in the official `.npz` layout, atomically, one array at a
    time (no copy of all the weights at once).

    Example:
        >>> bit_tf.save_official_weights(model, "my-bit.npz")
        'my-bit.npz'
    """
    variables = official_variables(model)

    def write(temporary: str) -> None:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, variable in variables.items():
                shape = tuple(variable.shape)
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                    "fortran_order": False,
                    "shape": (1, 1, *shape) if key == HEAD_KERNEL else shape,
                }
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, header)
                    for block in _value_blocks(variable):
                        member.write(np.ascontiguousarray(block, np.float32).data)

    return write_through(path, write, suffix=".npz")
