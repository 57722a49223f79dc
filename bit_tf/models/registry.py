"""The registry of BiT: model names, units per depth, upstream heads, released checkpoints.

Released checkpoints are data too (`RELEASES`): the upstream BiT-S and BiT-M models, BiT-M
fine-tuned on ILSVRC-2012 and on each VTAB-1k task, and the distilled BiT-R50x1 models with
their BiT-M-R152x2 teachers, each with its file under the base URL and its head.

Tables as data; `bit_tf.models` builds from them and `bit_tf.models.weights` resolves released
checkpoint names with them.

Example:
    >>> from bit_tf.models import registry
    >>> registry.parse_model_name("BiT-M-R50x1")
    ('M', 50, 1)
    >>> "BiT-S-R101x3" in registry.RELEASED_CHECKPOINTS
    True
    >>> registry.find_release("BiT-M-R50x1-run0-dsprites-xpos").file
    'vtab/BiT-M-R50x1-run0-dsprites-xpos.npz'
"""

from __future__ import annotations

import dataclasses
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


# The checkpoints the authors published (google-research/big_transfer, README), by name. The
# files live under one base URL (`bit_tf.models.weights.OFFICIAL_BASE_URL`, or BIT_TF_WEIGHTS_URL).
#: Upstream BiT-S and BiT-M, and BiT-M fine-tuned on ILSVRC-2012 ("-ILSVRC2012"). The README
#: lists R50x1, R101x1, R50x3, R101x3 and R152x4, and R152x2 as released after the paper; it
#: does not say whether a BiT-S R152x2 file exists.
RELEASED_ARCHITECTURES = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")
#: The architectures of the VTAB-1k fine-tuned release: 5 architectures x 3 runs x 19 tasks.
VTAB_RELEASE_ARCHITECTURES = ("R50x1", "R101x1", "R50x3", "R101x3", "R152x4")
VTAB_RELEASE_RUNS = 3
#: The task spellings of the VTAB-1k release, in the README's order -> (the `bit_tf.evaluation.vtab`
#: task, classes of the task).
VTAB_RELEASE_TASKS = {
    "caltech101": ("caltech101", 102),
    "diabetic_retinopathy": ("diabetic_retinopathy", 5),
    "dtd": ("dtd", 47),
    "oxford_flowers102": ("oxford_flowers102", 102),
    "oxford_iiit_pet": ("oxford_iiit_pet", 37),
    "resisc45": ("resisc45", 45),
    "sun397": ("sun397", 397),
    "cifar100": ("cifar100", 100),
    "eurosat": ("eurosat", 10),
    "patch_camelyon": ("patch_camelyon", 2),
    "smallnorb-elevation": ("smallnorb_elevation", 9),
    "svhn": ("svhn", 10),
    "dsprites-orientation": ("dsprites_orientation", 16),
    "smallnorb-azimuth": ("smallnorb_azimuth", 18),
    "clevr-distance": ("clevr_distance", 6),
    "clevr-count": ("clevr_count", 8),
    "dmlab": ("dmlab", 6),
    "kitti-distance": ("kitti_distance", 4),
    "dsprites-xpos": ("dsprites_location", 16),
}
ILSVRC2012_CLASSES = 1000
#: The data sets of the released 128-px distillation teachers, and their classes.
DATASET_TEACHER_CLASSES = {"flowers": 102, "pet": 37, "food": 101, "sun": 397}
RELEASE_GROUPS = ("upstream", "ILSVRC2012", "vtab", "distilled", "teacher")


@dataclasses.dataclass(frozen=True)
class ReleasedCheckpoint:
    """One checkpoint the authors published.

    Attributes:
        name: the name bit_tf knows it by, e.g. "BiT-M-R50x1-run0-caltech101".
        file: its path under the base URL, e.g. "vtab/BiT-M-R50x1-run0-caltech101.npz".
        depth, width: the ResNetV2 architecture (50 and 1 for R50x1).
        num_classes: the classes of its head.
        group: "upstream", "ILSVRC2012", "vtab", "distilled" or "teacher".

    Example:
        >>> find_release("BiT-R50x1-distilled-224").file
        'distill/R50x1_224.npz'
    """

    name: str
    file: str
    depth: int
    width: int
    num_classes: int
    group: str


def _architecture(arch: str) -> tuple[int, int]:
    depth, width = arch[1:].split("x")
    return int(depth), int(width)


def _releases() -> dict[str, ReleasedCheckpoint]:
    releases = []
    for prefix in ("S", "M"):
        for arch in RELEASED_ARCHITECTURES:
            name = f"BiT-{prefix}-{arch}"
            classes = UPSTREAM[prefix]["num_classes"]
            releases.append(
                ReleasedCheckpoint(name, f"{name}.npz", *_architecture(arch), classes, "upstream")
            )
    for arch in RELEASED_ARCHITECTURES:
        name = f"BiT-M-{arch}-ILSVRC2012"
        releases.append(
            ReleasedCheckpoint(
                name, f"{name}.npz", *_architecture(arch), ILSVRC2012_CLASSES, "ILSVRC2012"
            )
        )
    for arch in VTAB_RELEASE_ARCHITECTURES:
        for run in range(VTAB_RELEASE_RUNS):
            for task, (_, classes) in VTAB_RELEASE_TASKS.items():
                name = f"BiT-M-{arch}-run{run}-{task}"
                releases.append(
                    ReleasedCheckpoint(
                        name, f"vtab/{name}.npz", *_architecture(arch), classes, "vtab"
                    )
                )
    for resolution in (224, 160):
        releases.append(
            ReleasedCheckpoint(
                f"BiT-R50x1-distilled-{resolution}",
                f"distill/R50x1_{resolution}.npz",
                50,
                1,
                ILSVRC2012_CLASSES,
                "distilled",
            )
        )
    for resolution in (224, 384):
        releases.append(
            ReleasedCheckpoint(
                f"BiT-M-R152x2-teacher-{resolution}",
                f"distill/R152x2_T_{resolution}.npz",
                152,
                2,
                ILSVRC2012_CLASSES,
                "teacher",
            )
        )
    # The teachers big_vision's distillation configs use on the small data sets
    # (configs/proj/distill/common.py `inits`: "BiT-M R152x2 <dataset> rc128"), fine-tuned at
    # 128 px; classes from NCLS of bigsweep_flowers_pet.py and bigsweep_food_sun.py.
    for dataset, classes in DATASET_TEACHER_CLASSES.items():
        releases.append(
            ReleasedCheckpoint(
                f"BiT-M-R152x2-teacher-{dataset}-128",
                f"distill/R152x2_T_{dataset}128.npz",
                152,
                2,
                classes,
                "teacher",
            )
        )
    return {release.name: release for release in releases}


RELEASES: dict[str, ReleasedCheckpoint] = _releases()
RELEASED_CHECKPOINTS = tuple(RELEASES)


# The authors' BiT checkpoints as timm (huggingface/pytorch-image-models, timm/models/resnetv2.py,
# `default_cfgs`) publishes them on the Hugging Face Hub: repository `timm/<name>`, a
# `model.safetensors` in timm's layout (`bit_tf.models.timm_weights`) and timm's `config.json`. Each
# is one of the authors' files, converted: `same_as` names it. `input_size` is the square size of
# timm's configuration (its evaluation size), `num_classes` the head.
TIMM_GROUP = "timm"
TIMM_ORGANIZATION = "timm"


@dataclasses.dataclass(frozen=True)
class TimmRelease:
    """One of timm's BiT checkpoints on the Hugging Face Hub.

    Attributes:
        name: timm's name, e.g. "resnetv2_50x1_bit.goog_in21k" (architecture.tag).
        depth, width: the ResNetV2 architecture (50 and 1 for resnetv2_50x1_bit).
        num_classes: the classes of its head.
        input_size: the square input size of timm's configuration, e.g. 448.
        same_as: the authors' release it was converted from, e.g. "BiT-M-R50x1".

    Example:
        >>> find_timm_release("resnetv2_50x1_bit.goog_in21k").repo_id
        'timm/resnetv2_50x1_bit.goog_in21k'
    """

    name: str
    depth: int
    width: int
    num_classes: int
    input_size: int
    same_as: str

    @property
    def repo_id(self) -> str:
        """The Hugging Face Hub repository, e.g. "timm/resnetv2_50x1_bit.goog_in21k"."""
        return f"{TIMM_ORGANIZATION}/{self.name}"


#: timm's checkpoints of the distillation paper: name, depth, width, input size, same_as.
_TIMM_DISTILLATION = (
    ("resnetv2_50x1_bit.goog_distilled_in1k", 50, 1, 224, "BiT-R50x1-distilled-224"),
    ("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", 152, 2, 224, "BiT-M-R152x2-teacher-224"),
    ("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384", 152, 2, 384, "BiT-M-R152x2-teacher-384"),
)
#: timm's input size of the ILSVRC-2012 fine-tuned BiT-M models: 448, but 480 for R152x4.
_TIMM_ILSVRC2012_SIZES = {"R152x4": 480}


def _timm_releases() -> dict[str, TimmRelease]:
    releases = [
        TimmRelease(name, depth, width, ILSVRC2012_CLASSES, size, same_as)
        for name, depth, width, size, same_as in _TIMM_DISTILLATION
    ]
    for arch in RELEASED_ARCHITECTURES:
        depth, width = _architecture(arch)
        size = _TIMM_ILSVRC2012_SIZES.get(arch, 448)
        name = f"resnetv2_{depth}x{width}_bit.goog_in21k_ft_in1k"
        releases.append(
            TimmRelease(name, depth, width, ILSVRC2012_CLASSES, size, f"BiT-M-{arch}-ILSVRC2012")
        )
    for arch in RELEASED_ARCHITECTURES:
        depth, width = _architecture(arch)
        name = f"resnetv2_{depth}x{width}_bit.goog_in21k"
        classes = UPSTREAM["M"]["num_classes"]
        releases.append(TimmRelease(name, depth, width, classes, 224, f"BiT-M-{arch}"))
    return {release.name: release for release in releases}


TIMM_RELEASES: dict[str, TimmRelease] = _timm_releases()
#: How timm and bit_tf write a Hugging Face Hub repository as weights: "hf-hub:<owner>/<name>".
HF_HUB_PREFIX = "hf-hub:"


def find_timm_release(name: str) -> TimmRelease | None:
    """timm's BiT checkpoint called `name` ("resnetv2_50x1_bit.goog_in21k", also written
    "hf-hub:timm/resnetv2_50x1_bit.goog_in21k"), or None.

    Example:
        >>> find_timm_release("hf-hub:timm/resnetv2_152x4_bit.goog_in21k_ft_in1k").input_size
        480
    """
    if not isinstance(name, str):
        return None
    return TIMM_RELEASES.get(name.removeprefix(f"{HF_HUB_PREFIX}{TIMM_ORGANIZATION}/"))


def list_released_checkpoints(group: str | None = None) -> list[str]:
    """The names of the checkpoints the authors published, all or of one group.

    Groups: "upstream" (BiT-S, BiT-M), "ILSVRC2012" (BiT-M fine-tuned on ILSVRC-2012), "vtab"
    (BiT-M fine-tuned on each VTAB-1k task, 3 runs), "distilled" (BiT-R50x1 students distilled
    from BiT-M-R152x2) and "teacher" (those BiT-M-R152x2 teachers); and "timm": the names of
    timm's copies of them on the Hugging Face Hub (`TIMM_RELEASES`), which `weights=` takes too.

    Example:
        >>> list_released_checkpoints("distilled")
        ['BiT-R50x1-distilled-224', 'BiT-R50x1-distilled-160']
        >>> len(list_released_checkpoints("vtab"))
        285
        >>> list_released_checkpoints("timm")[0]
        'resnetv2_50x1_bit.goog_distilled_in1k'
    """
    if group == TIMM_GROUP:
        return list(TIMM_RELEASES)
    if group is not None and group not in RELEASE_GROUPS:
        groups = (*RELEASE_GROUPS, TIMM_GROUP)
        raise ValueError(f"Unknown release group {group!r}; choose one of {groups}.")
    return [name for name, release in RELEASES.items() if group in (None, release.group)]


def find_release(name: str) -> ReleasedCheckpoint | None:
    """The released checkpoint called `name`, or None.

    Example:
        >>> find_release("BiT-M-R50x1-ILSVRC2012").num_classes
        1000
    """
    return RELEASES.get(name) if isinstance(name, str) else None


def architecture(name: str) -> tuple[int, int]:
    """(depth, width) of a model name ("BiT-M-R50x1") or a released name
    ("BiT-M-R50x1-run0-caltech101", "BiT-R50x1-distilled-224").

    Example:
        >>> architecture("BiT-M-R152x2-teacher-384")
        (152, 2)
        >>> architecture("resnetv2_101x3_bit.goog_in21k")  # timm's name (TIMM_RELEASES)
        (101, 3)
    """
    release = find_release(name) or find_timm_release(name)
    if release is not None:
        return release.depth, release.width
    _, depth, width = parse_model_name(name)
    return depth, width


def default_num_classes(name: str) -> int:
    """The head a name stands for: a release's head, else the upstream data's classes.

    Example:
        >>> default_num_classes("BiT-M-R50x1"), default_num_classes("BiT-M-R50x1-ILSVRC2012")
        (21843, 1000)
    """
    release = find_release(name) or find_timm_release(name)
    if release is not None:
        return release.num_classes
    prefix, _, _ = parse_model_name(name)
    return UPSTREAM[prefix]["num_classes"]


def depth_of(units_per_block: tuple, unit: str) -> int | None:
    """The depth of a ResNetV2 with these units per block and unit kind ("bottleneck" or
    "basic"), or None when it is not one of `UNITS_PER_BLOCK`.

    Example:
        >>> depth_of((2, 2, 2, 2), "basic"), depth_of((2, 2, 2, 2), "bottleneck")
        (18, 26)
    """
    for depth, units in UNITS_PER_BLOCK.items():
        if tuple(units) == tuple(units_per_block) and (depth in BASIC_DEPTHS) == (unit == "basic"):
            return depth
    return None


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
            f"for example 'BiT-M-R50x1'. list_models() lists them all, and "
            f"list_released_checkpoints() the released names, which work too."
        )
    prefix, depth, width = match.group(1), int(match.group(2)), int(match.group(3))
    if depth not in UNITS_PER_BLOCK or width not in WIDTH_FACTORS:
        raise ValueError(
            f"Unknown model name {name!r}: depth must be one of {sorted(UNITS_PER_BLOCK)} and "
            f"width one of {WIDTH_FACTORS}."
        )
    return prefix, depth, width
