"""VTAB-1k and few-shot evaluation of a backbone, as the BiT paper evaluates.

VTAB-1k (Zhai et al., 2019) is 19 image-classification tasks in three groups: Natural,
Specialized and Structured. Each task trains on 1,000 examples, the first 800 of the task's
training split ("train800") and the first 200 of its validation split ("val200"), and is scored
on its full test split. The Structured tasks predict a label derived from annotations (object
count, closest distance, position, orientation, pose). Splits and labels follow the reference
implementation, google-research/task_adaptation; where a TFDS dataset has no validation (or no
labelled test) split, VTAB carves one out of the training split by the same percentages.

`load_task` gives the three splits as `bit_tf.data.ImageSource`s; `run_vtab` fine-tunes a
fresh copy of a backbone on each task with the BiT-HyperRule (`bit_tf.finetune`) and writes a
results table with the Natural / Specialized / Structured and overall means; `run_few_shot`
fine-tunes on 1, 5, 10 and 25 examples per class over several seeds.

Example:
    >>> from bit_tf.evaluation import vtab
    >>> splits = vtab.load_task("clevr_count")
    >>> splits.train.num_examples, splits.validation.num_examples, splits.train.num_classes
    (800, 200, 8)
    >>> results = vtab.run_vtab("BiT-M-R50x1", weights="BiT-M-R50x1", output_dir="runs/vtab")
    >>> results.means()["Overall"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from bit_tf.data import pipelines as data_lib
from bit_tf.data.example_readers import ConcatenatedReader
from bit_tf.training import atomic

log = logging.getLogger(__name__)

NATURAL, SPECIALIZED, STRUCTURED = "Natural", "Specialized", "Structured"
GROUPS = (NATURAL, SPECIALIZED, STRUCTURED)
TRAIN_EXAMPLES = 800
VALIDATION_EXAMPLES = 200
FEW_SHOT_EXAMPLES = (1, 5, 10, 25)

#: Clevr/distance: the depth of the closest object, binned at these thresholds (6 classes).
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
#: KITTI/distance: the depth (metres) of the closest car, van or truck, binned at these
#: thresholds; images without one get depth 1000, the last class ("no vehicle").
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
KITTI_VEHICLE_TYPES = 3  # TFDS kitti object types 0, 1, 2: Car, Van, Truck.
KITTI_NO_VEHICLE_DEPTH = 1000.0


# --- Derived labels of the Structured tasks ----------------------------------------------


def binned_label(value, thresholds: Sequence[float], num_classes: int):
    """The index of the last threshold below `value` (VTAB's `max(where(thresholds < value))`).

    The result is kept in [0, num_classes): a value below the first threshold or above the
    last class's range (neither occurs in the real data) lands in the nearest class.

    Example:
        >>> int(binned_label(8.7, CLEVR_DISTANCE_THRESHOLDS, num_classes=6))
        2
    """
    thresholds = tf.constant(thresholds, tf.float32)
    below = tf.reduce_sum(tf.cast(thresholds < tf.cast(value, tf.float32), tf.int32)) - 1
    return tf.clip_by_value(below, 0, num_classes - 1)


def clevr_count_label(example: dict):
    """Clevr/count: the number of objects minus 3 (scenes hold 3 to 10 objects: 8 classes)."""
    return tf.size(example["objects"]["size"], out_type=tf.int32) - 3


def clevr_distance_label(example: dict):
    """Clevr/distance: the smallest depth (`pixel_coords[:, 2]`) of any object, in 6 bins."""
    depth = tf.reduce_min(example["objects"]["pixel_coords"][:, 2])
    return binned_label(depth, CLEVR_DISTANCE_THRESHOLDS, num_classes=6)


def kitti_distance_label(example: dict):
    """KITTI/distance: depth of the closest vehicle (car, van, truck) in 3 bins, or "none"."""
    objects = example["objects"]
    is_vehicle = objects["type"] < KITTI_VEHICLE_TYPES
    depths = tf.boolean_mask(objects["location"][:, 2], is_vehicle)
    depths = tf.concat([tf.cast(depths, tf.float32), [KITTI_NO_VEHICLE_DEPTH]], axis=0)
    return binned_label(tf.reduce_min(depths), KITTI_DISTANCE_THRESHOLDS, num_classes=4)


def grouped_label(key: str, original_classes: int, num_classes: int) -> Callable:
    """A label function that merges `original_classes` neighbouring values into `num_classes`.

    dSprites: 32 x-positions -> 16 locations, 40 orientations -> 16 (VTAB divides by
    original / new and floors).

    Example:
        >>> location = grouped_label("label_x_position", 32, 16)
        >>> int(location({"label_x_position": tf.constant(31)}))
        15
    """
    factor = original_classes / num_classes

    def label(example):
        value = tf.cast(example[key], tf.float32)
        return tf.cast(tf.math.floordiv(value, factor), tf.int32)

    return label


def feature_label(key: str) -> Callable:
    """A label function that reads an existing class-label feature."""

    def label(example):
        return tf.cast(example[key], tf.int32)

    return label


# --- The 19 tasks -------------------------------------------------------------------------


#: The source of the switches of a task that keeps both: nothing in its label changes with a
#: flip or a crop. task_adaptation trains every task without either (data_loader.py L61-69
#: resizes only); the BiT fine-tuning code crops and flips every task
#: (big_transfer input_pipeline_tf2_or_jax.py L100-103).
STANDARD_AUGMENTATION = (
    "the label is a class of the whole image: a flip or a crop keeps it (BiT fine-tuning: "
    "big_transfer input_pipeline_tf2_or_jax.py L100-103)"
)


@dataclasses.dataclass(frozen=True)
class Task:
    """One VTAB-1k task.

    Attributes:
        name: the key of `TASKS`, e.g. "clevr_count".
        title: the name in the VTAB table, e.g. "Clevr/count".
        group: "Natural", "Specialized" or "Structured".
        tfds_name: the TFDS dataset, config and version VTAB uses, e.g. "clevr:3.*.*" (the
            versions of google-research/task_adaptation where the installed TFDS still
            builds them; `TFDS_VERSION_NOTES` names the exceptions).
        num_classes: classes of the (derived) label.
        train_split, validation_split, test_split: VTAB's splits as TFDS split strings;
            VTAB-1k trains on the first 800 of `train_split` and the first 200 of
            `validation_split`, and tests on all of `test_split`.
        label: example dict -> int32 label.
        label_features: the features `label` reads, as a `tfds.decode.PartialDecoding` spec
            (labels are read without decoding the images).
        image_key: the image feature.
        image_scale: multiplies the stored pixel values before they are read as uint8
            (dSprites stores 0/1 pixels).
        random_flip: train with random horizontal flips; False where a flip changes the label
            (dSprites/location, dSprites/orientation, SmallNORB/azimuth).
        random_crop: train with random crops; False where a crop changes the label (Clevr/count,
            Clevr/distance, DMLab, KITTI/distance, dSprites/location): the images are then
            resized straight to the crop size.
        augmentation_source: why `random_flip` and `random_crop` are what they are. No
            per-task table was found in the BiT papers' text available to us,
            google-research/task_adaptation, big_transfer or big_vision; each switch is derived
            from the label's definition in task_adaptation, following the principle of
            dropping an augmentation that changes the label.
    """

    name: str
    title: str
    group: str
    tfds_name: str
    num_classes: int
    train_split: str
    validation_split: str
    test_split: str
    label: Callable = dataclasses.field(default=feature_label("label"), compare=False)
    label_features: dict = dataclasses.field(default_factory=lambda: {"label": True})
    image_key: str = "image"
    image_scale: int = 1
    random_flip: bool = True
    random_crop: bool = True
    augmentation_source: str = dataclasses.field(default=STANDARD_AUGMENTATION, compare=False)


def _task(name, title, group, tfds_name, num_classes, splits, **options) -> Task:
    return Task(name, title, group, tfds_name, num_classes, *splits, **options)


_STANDARD = ("train", "validation", "test")
_TA = "google-research/task_adaptation"
_FLIPS_X = "a flip mirrors it"
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # Natural.
        _task("caltech101", "Caltech101", NATURAL, "caltech101:3.*.*", 102,
              ("train[:90%]", "train[90%:]", "test")),
        _task("cifar100", "CIFAR-100", NATURAL, "cifar100:3.*.*", 100,
              ("train[:90%]", "train[90%:]", "test")),
        _task("dtd", "DTD", NATURAL, "dtd:3.*.*", 47, _STANDARD),
        _task("oxford_flowers102", "Flowers102", NATURAL, "oxford_flowers102:2.*.*", 102,
              _STANDARD),
        _task("oxford_iiit_pet", "Pets", NATURAL, "oxford_iiit_pet:4.*.*", 37,
              ("train[:80%]", "train[80%:]", "test")),
        _task("sun397", "Sun397", NATURAL, "sun397/tfds:4.*.*", 397, _STANDARD),
        _task("svhn", "SVHN", NATURAL, "svhn_cropped:3.*.*", 10,
              ("train[:90%]", "train[90%:]", "test")),
        # Specialized.
        _task("eurosat", "EuroSAT", SPECIALIZED, "eurosat/rgb:2.*.*", 10,
              ("train[:60%]", "train[60%:80%]", "train[80%:]")),
        _task("resisc45", "Resisc45", SPECIALIZED, "resisc45:3.*.*", 45,
              ("train[:60%]", "train[60%:80%]", "train[80%:]")),
        _task("patch_camelyon", "Patch Camelyon", SPECIALIZED, "patch_camelyon:2.*.*", 2,
              _STANDARD),
        _task("diabetic_retinopathy", "Retinopathy", SPECIALIZED,
              "diabetic_retinopathy_detection/btgraham-300:3.*.*", 5, _STANDARD),
        # Structured.
        _task("clevr_count", "Clevr/count", STRUCTURED, "clevr:3.*.*", 8,
              ("train[:90%]", "train[90%:]", "validation"), label=clevr_count_label,
              label_features={"objects": {"size"}}, random_crop=False,
              augmentation_source=f"label = objects in the scene - 3 ({_TA} data/clevr.py "
              "L32-34): a crop can cut objects out"),
        _task("clevr_distance", "Clevr/distance", STRUCTURED, "clevr:3.*.*", 6,
              ("train[:90%]", "train[90%:]", "validation"), label=clevr_distance_label,
              label_features={"objects": {"pixel_coords"}}, random_crop=False,
              augmentation_source=f"label = depth of the closest object ({_TA} data/clevr.py "
              "L45-46): a crop can cut that object out (our judgement)"),
        _task("dsprites_location", "dSprites/location", STRUCTURED, "dsprites:2.*.*", 16,
              ("train[:80%]", "train[80%:90%]", "train[90%:]"),
              label=grouped_label("label_x_position", 32, 16), image_scale=255,
              label_features={"label_x_position": True}, random_flip=False, random_crop=False,
              augmentation_source=f"label = x position ({_TA} scripts/run_all_tasks.sh "
              f"L34): {_FLIPS_X}, a crop moves it in the frame"),
        _task("dsprites_orientation", "dSprites/orientation", STRUCTURED, "dsprites:2.*.*", 16,
              ("train[:80%]", "train[80%:90%]", "train[90%:]"),
              label=grouped_label("label_orientation", 40, 16), image_scale=255,
              label_features={"label_orientation": True}, random_flip=False,
              augmentation_source=f"label = orientation ({_TA} scripts/run_all_tasks.sh "
              f"L35): {_FLIPS_X}; a crop keeps it"),
        _task("smallnorb_azimuth", "SmallNORB/azimuth", STRUCTURED, "smallnorb:2.*.*", 18,
              ("train", "test[:50%]", "test[50%:]"), label=feature_label("label_azimuth"),
              label_features={"label_azimuth": True}, random_flip=False,
              augmentation_source=f"label = azimuth ({_TA} scripts/run_all_tasks.sh L36): "
              f"{_FLIPS_X}"),
        _task("smallnorb_elevation", "SmallNORB/elevation", STRUCTURED, "smallnorb:2.*.*", 9,
              ("train", "test[:50%]", "test[50%:]"), label=feature_label("label_elevation"),
              label_features={"label_elevation": True},
              augmentation_source=f"label = elevation ({_TA} scripts/run_all_tasks.sh L37): "
              "neither a flip nor a crop changes it"),
        _task("dmlab", "DMLab", STRUCTURED, "dmlab:2.0.1", 6, _STANDARD, random_crop=False,
              augmentation_source="label = {close, far, very far} x reward of the objects in "
              f"view ({_TA} data/dmlab.py L28-37): a crop can cut them out (our judgement)"),
        _task("kitti_distance", "KITTI/distance", STRUCTURED, "kitti:3.1.0", 4, _STANDARD,
              label=kitti_distance_label,
              label_features={"objects": {"type", "location"}}, random_crop=False,
              augmentation_source=f"label = distance of the closest vehicle ({_TA} "
              "data/kitti.py L90-100): a crop can cut it out (our judgement)"),
    )
}  # fmt: skip


#: Where the TFDS version differs from the one google-research/task_adaptation pins, and why.
TFDS_VERSION_NOTES = {
    "oxford_iiit_pet": (
        "VTAB pins oxford_iiit_pet 3.x; the installed TFDS builds only 4.x, which bit_tf uses."
    ),
}


def get_task(name: str) -> Task:
    """The task called `name` (a key of `TASKS`), with a clear error for unknown names.

    Example:
        >>> get_task("dsprites_location").num_classes
        16
    """
    if name not in TASKS:
        raise ValueError(f"Unknown VTAB task {name!r}; choose from {', '.join(TASKS)}.")
    return TASKS[name]


# --- Loading ------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskSplits:
    """The VTAB-1k splits of a task: train (800), validation (200), test (all), and the TFDS
    version they were read from (e.g. "3.1.0")."""

    task: Task
    train: data_lib.ImageSource
    validation: data_lib.ImageSource
    test: data_lib.ImageSource
    tfds_version: str | None = None

    @property
    def train_and_validation(self) -> data_lib.ImageSource:
        """All 1,000 training examples (VTAB's "train800val200")."""
        return _concatenate(self.train, self.validation, f"{self.task.name}:train800val200")


def _concatenate(first, second, name):
    total = first.num_examples + second.num_examples
    return data_lib.ImageSource(
        name,
        first.num_classes,
        first.class_names,
        total,
        first.image_size,
        ConcatenatedReader(first.reader, first.num_examples, second.reader),
        label_reader=lambda: np.concatenate([first.labels(), second.labels()]),
    )


class DatasetUnavailableError(RuntimeError):
    """A task's TFDS dataset cannot be loaded here (not downloaded, not prepared, no network).

    Example:
        >>> try:
        ...     splits = load_task("dtd", download=False)
        ... except DatasetUnavailableError as error:
        ...     print(error)  # the dataset, the split, and TFDS's reason
    """


def _split_source(
    task: Task, split: str, limit: int | None, role: str, data_dir, download: bool
) -> data_lib.ImageSource:
    """The first `limit` examples (all if None) of `split` of `task`'s dataset, labelled by the
    task's (range-checked) label, as a source named "<task>:<role>"."""
    import tensorflow_datasets as tfds

    load, dataset, info = _open_split(task, split, limit, data_dir, download)
    source = data_lib.tfds_source(
        f"{task.name}:{role}",
        load,
        info,
        split,
        task.image_key,
        _checked_label(task),
        [str(index) for index in range(task.num_classes)],
        label_decoders=tfds.decode.PartialDecoding(task.label_features),
        image_scale=task.image_scale,
        dataset=dataset,
    )
    if limit is not None and source.num_examples < limit:
        raise ValueError(
            f"VTAB task {task.name!r}: split {split!r} has {source.num_examples} examples, "
            f"fewer than the {limit} VTAB-1k takes from it ({role})."
        )
    return source


def _open_split(task: Task, split: str, limit: int | None, data_dir, download: bool):
    """(load, dataset, info) of `split` of `task`'s TFDS dataset: `load(decoders)` gives its
    first `limit` examples, `dataset` is `load()`; DatasetUnavailableError if TFDS cannot."""
    import tensorflow_datasets as tfds

    load_options = {
        "split": split,
        "data_dir": data_dir,
        "shuffle_files": False,
        "download": download,
    }

    def load(decoders=None):
        dataset = tfds.load(task.tfds_name, decoders=decoders, **load_options)
        return dataset.take(limit) if limit is not None else dataset

    try:
        dataset = load()
    except Exception as error:  # TFDS raises several types for a missing or unprepared dataset
        raise DatasetUnavailableError(
            f"Could not load TFDS dataset {task.tfds_name!r} (split {split!r}) for VTAB task "
            f"{task.name!r}: {error}. Two VTAB datasets (diabetic_retinopathy_detection, "
            "resisc45) need a manual download into the TFDS manual folder; see "
            "https://www.tensorflow.org/datasets/catalog/overview."
        ) from error
    return load, dataset, tfds.builder(task.tfds_name, data_dir=data_dir).info


def _checked_label(task: Task) -> Callable:
    """`task.label`, failing with a message naming the task where a derived label falls
    outside [0, task.num_classes)."""
    message = f"VTAB task {task.name!r}: derived label outside [0, {task.num_classes})"

    def checked_label(example):
        label = tf.cast(task.label(example), tf.int32)
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(label, message=message),
                tf.debugging.assert_less(label, task.num_classes, message=message),
            ]
        ):
            return tf.identity(label)

    return checked_label


def load_task(
    name: str,
    data_dir: str | None = None,
    download: bool = True,
    train_examples: int = TRAIN_EXAMPLES,
    validation_examples: int = VALIDATION_EXAMPLES,
) -> TaskSplits:
    """The VTAB-1k splits of task `name`: train800, val200 and the full test split.

    Args:
        name: a key of `TASKS`, e.g. "caltech101" or "kitti_distance".
        data_dir: the TFDS data folder (default ~/tensorflow_datasets).
        download: let TFDS download and prepare the dataset when it is missing.
        train_examples, validation_examples: 800 and 200 in VTAB-1k.

    Returns:
        `TaskSplits` of `bit_tf.data.ImageSource`s yielding (float32 image in [0, 1], HxWx3,
        int32 label), ready for `bit_tf.finetune`.

    Example:
        >>> splits = load_task("dsprites_orientation")
        >>> splits.test.num_classes
        16
    """
    import tensorflow_datasets as tfds

    task = get_task(name)
    return TaskSplits(
        task,
        _split_source(task, task.train_split, train_examples, "train800", data_dir, download),
        _split_source(
            task, task.validation_split, validation_examples, "val200", data_dir, download
        ),
        _split_source(task, task.test_split, None, "test", data_dir, download),
        str(tfds.builder(task.tfds_name, data_dir=data_dir).info.version),
    )


# --- Running ------------------------------------------------------------------------------


def _fresh_backbone(model):
    """A new backbone per task: a model name stays a name; a callable is called."""
    return model() if callable(model) and not isinstance(model, str) else model


def evaluate_accuracy(model, source: data_lib.ImageSource, crop: int, batch_size: int = 64):
    """Top-1 accuracy of `model` on every example of `source`, images resized to `crop`.

    Example:
        >>> evaluate_accuracy(model, splits.test, crop=384)
        0.873
    """
    correct = total = 0
    for images, labels in data_lib.eval_pipeline(source, batch_size, crop, cache=False):
        logits = model.predict_on_batch(images)
        correct += int(np.sum(np.argmax(logits, -1) == np.argmax(labels.numpy(), -1)))
        total += int(labels.shape[0])
    return correct / max(total, 1)


def _resolution(source, resize, crop, model_name, options: dict):
    """(resize, crop) of a run: given sizes, else the HyperRule's (options' "hyperrule")."""
    from bit_tf.finetune.hyperrule_choice import rule_resolution

    rule = options.get("hyperrule", "lecture")
    rule_resize, rule_crop = rule_resolution(rule, source.image_size, model_name)
    crop = crop or (rule_crop if resize is None else min(rule_crop, resize))
    return resize or max(rule_resize, crop), crop


def _limited(source: data_lib.ImageSource, limit: int | None) -> data_lib.ImageSource:
    if limit is None or source.num_examples <= limit:
        return source
    return source.subset(range(limit), name=f"{source.name} (first {limit})")


#: The stem of the files `run_vtab` writes (`vtab_results.md` and `.json`).
VTAB_RESULTS = "vtab_results"
#: The stem of the files `run_few_shot` writes (`few_shot_results.md` and `.json`).
FEW_SHOT_RESULTS = "few_shot_results"


def _results_paths(output_dir: str, stem: str) -> tuple[str, str]:
    """The paths of `<stem>.md` and `<stem>.json` in `output_dir`."""
    return atomic.join(output_dir, f"{stem}.md"), atomic.join(output_dir, f"{stem}.json")


def refuse_existing_results(output_dir: str | None, stem: str, overwrite: bool) -> None:
    """Raises `TargetExistsError` if `output_dir` already holds `<stem>.md` or `<stem>.json`
    and `overwrite` is False: results of an earlier run are not replaced unless asked.

    `run_vtab` and `run_few_shot` call it before any work, so that a run of hours is not spent
    on results that could not be written; `bit-vtab` calls it before it reads a dataset.

    Example:
        >>> refuse_existing_results("runs/vtab", VTAB_RESULTS, overwrite=False)
        Traceback (most recent call last):
        TargetExistsError: runs/vtab/vtab_results.md already exists (the results of an earlier
        run); refusing to overwrite it. Pass overwrite=True (bit-vtab --overwrite) to replace it,
        or choose another output_dir.
    """
    if overwrite or not output_dir:
        return
    for path in _results_paths(output_dir, stem):
        if atomic.exists(path):
            raise atomic.TargetExistsError(
                f"{path} already exists (the results of an earlier run); refusing to overwrite "
                "it. Pass overwrite=True (bit-vtab --overwrite) to replace it, or choose "
                "another output_dir."
            )


def _write_results(output_dir: str, stem: str, markdown: str, record: dict) -> tuple[str, str]:
    """Writes `markdown` to `<stem>.md` and `record` to `<stem>.json` in `output_dir` (made if
    missing), each atomically, replacing what is there; returns their paths."""
    markdown_path, json_path = _results_paths(output_dir, stem)
    atomic.write_text(markdown_path, markdown)
    atomic.write_text(json_path, json.dumps(record, indent=2))
    return markdown_path, json_path


#: Runs per task: the authors released 3 runs of every task (big_transfer README L73); how they
#: aggregate them is not stated there; bit-tf reports the median.
RUNS_PER_TASK = 3
#: Few-shot runs per number of examples: the authors report min, median and max over at least
#: five (big_transfer README L121-122).
FEW_SHOT_RUNS = 5


@dataclasses.dataclass
class VtabResults:
    """Per-task accuracies of a VTAB-1k run, with the group and overall means.

    Attributes:
        rows: one dict per task: task, title, group, num_classes, tfds_name (with the version
            asked for) and tfds_version (the one read), random_flip and random_crop,
            test_examples, runs (one dict per run: run, seed, validation_accuracy,
            test_accuracy), and validation_accuracy (None if not measured) and test_accuracy:
            the medians over the runs.
    """

    rows: list

    def means(self) -> dict:
        """Mean (over tasks) median test accuracy per group present, and "Overall"."""
        means = {}
        for group in GROUPS:
            values = [row["test_accuracy"] for row in self.rows if row["group"] == group]
            if values:
                means[group] = float(np.mean(values))
        if self.rows:
            means["Overall"] = float(np.mean([row["test_accuracy"] for row in self.rows]))
        return means

    def to_markdown(self) -> str:
        """The results as a Markdown table: tasks by group with every run's test accuracy and
        the median, then the means of the medians (in %)."""
        lines = [
            "| Group | Task | TFDS | Classes | Test examples | Test acc. per run (%) "
            "| Val200 acc. (%) | Test acc., median (%) |",
            "|---|---|---|---:|---:|---|---:|---:|",
        ]
        for row in self.rows:
            validation = row.get("validation_accuracy")
            validation = "-" if validation is None else f"{100 * validation:.1f}"
            per_run = ", ".join(f"{100 * run['test_accuracy']:.1f}" for run in row["runs"])
            lines.append(
                f"| {row['group']} | {row['title']} | {row['tfds_name'].split(':')[0]} "
                f"{row['tfds_version']} | {row['num_classes']} | {row['test_examples']} | "
                f"{per_run} | {validation} | {100 * row['test_accuracy']:.1f} |"
            )
        for name, value in self.means().items():
            lines.append(f"| **{name} mean** | | | | | | | **{100 * value:.1f}** |")
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str) -> tuple[str, str]:
        """Writes `vtab_results.md` and `vtab_results.json`, replacing them if they exist (see
        `refuse_existing_results` to refuse that); returns their paths."""
        record = {"tasks": self.rows, "means": self.means()}
        return _write_results(output_dir, VTAB_RESULTS, self.to_markdown(), record)


def _median(values: list) -> float | None:
    return None if not values or None in values else float(np.median(values))


def run_vtab(
    model,
    tasks: Sequence[str] | None = None,
    *,
    weights: str | None = None,
    output_dir: str | None = None,
    data_dir: str | None = None,
    train_on_validation: bool = True,
    batch_size: int = 512,
    steps: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    max_test_examples: int | None = None,
    seed: int = 0,
    runs: int = RUNS_PER_TASK,
    download: bool = True,
    overwrite: bool = False,
    **finetune_options,
) -> VtabResults:
    """Fine-tunes `model` on each VTAB-1k task with the BiT-HyperRule, `runs` times, and tests it.

    With the HyperRule there is no hyper-parameter search, so by default each task trains on
    all 1,000 examples (train800 + val200), as the BiT paper does, and reports test accuracy;
    `train_on_validation=False` trains on train800 and also reports val200 accuracy. Each task
    trains with its own augmentation (`Task.random_flip`, `Task.random_crop`), and is run
    `runs` times from a fresh backbone with seeds `seed`, `seed + 1`, ...: the table keeps
    every run and reports the median.

    Args:
        model: a model name ("BiT-M-R50x1") with `weights`, or a function returning a fresh
            Keras backbone (called once per run; its head, if any, is replaced).
        tasks: keys of `TASKS` (default all 19).
        weights: released name, path or URL of the weights of a named model.
        output_dir: where `vtab_results.md` / `.json` are written (rewritten after each task).
            If it already holds them, `TargetExistsError` is raised before any work, unless
            `overwrite`.
        data_dir: the TFDS data folder.
        train_on_validation: train on train800 + val200 (True) or on train800 only.
        batch_size, steps, resize, crop: the HyperRule's by default (512; 500 steps for 1k
            examples; 160/128 or 448/384 by image size); smaller values scale the run down.
        max_test_examples: score on the first N test examples only (laptop scale; the table
            shows the number used). None: the full test split, as VTAB defines.
        seed: seed of the input pipeline of the first run.
        runs: runs per task (the authors released 3 per task).
        download: let TFDS download missing datasets.
        overwrite: replace the results files an earlier run left in `output_dir`.
        **finetune_options: passed to `bit_tf.finetune` (e.g. gradient_accumulation_steps).

    Raises:
        TargetExistsError: `output_dir` holds `vtab_results.md` or `.json` and `overwrite` is
            False (before any dataset is read or model built).

    Example:
        >>> results = run_vtab("BiT-S-R50x1", ["dtd", "eurosat"], weights="BiT-S-R50x1",
        ...                    output_dir="runs/vtab", batch_size=64, steps=100, runs=3)
        >>> print(results.to_markdown())
        >>> # Again into runs/vtab: TargetExistsError, unless overwrite=True.
    """
    _check_runs(runs)
    tasks = list(tasks or TASKS)
    for name in tasks:
        get_task(name)
    refuse_existing_results(output_dir, VTAB_RESULTS, overwrite)
    run_settings = {"weights": weights, "batch_size": batch_size, "steps": steps}
    results = VtabResults([])
    for name in tasks:
        splits = load_task(name, data_dir=data_dir, download=download)
        inputs = _vtab_inputs(splits, train_on_validation, max_test_examples)
        task_resize, task_crop = _resolution(
            inputs[0], resize, crop, _model_name(model), finetune_options
        )
        options = _task_options(splits.task, finetune_options)
        finetune_args = {**run_settings, "resize": task_resize, "crop": task_crop, **options}
        run_rows = [
            _vtab_run(model, name, inputs, run, runs, seed + run, finetune_args)
            for run in range(runs)
        ]
        results.rows.append(_task_row(splits, inputs[2], options, run_rows))
        if output_dir:
            results.write(output_dir)
    return results


def _check_runs(runs) -> None:
    """Raises ValueError unless `runs` is a positive integer (a bool is not)."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}.")


def _model_name(model) -> str | None:
    """The model's name where `model` is one (for the HyperRule's resolution), else None."""
    return model if isinstance(model, str) else None


def _vtab_inputs(splits: TaskSplits, train_on_validation: bool, max_test_examples: int | None):
    """(train, validation, test) of a task: train800 + val200 and no validation, or train800
    and val200; the test split, cut to `max_test_examples`."""
    if train_on_validation:
        train, validation = splits.train_and_validation, None
    else:
        train, validation = splits.train, splits.validation
    return train, validation, _limited(splits.test, max_test_examples)


def _task_options(task: Task, finetune_options: dict) -> dict:
    """The fine-tuning options of `task`: its augmentation switches, which `finetune_options`
    may override, and the rest of `finetune_options`."""
    return {"random_flip": task.random_flip, "random_crop": task.random_crop, **finetune_options}


def _vtab_run(model, name: str, inputs: tuple, run: int, runs: int, seed: int, finetune_args):
    """Fine-tunes a fresh backbone on task `name`'s (train, validation, test) `inputs` (run
    `run` of `runs`, pipeline seed `seed`) and scores it on the test split: {run, seed,
    validation_accuracy (None without a validation split), test_accuracy}."""
    from bit_tf.finetune.recipe import finetune

    train, validation, test = inputs
    log.info(
        "VTAB task %s, run %d of %d: fine-tuning on %d examples.",
        name,
        run + 1,
        runs,
        train.num_examples,
    )
    backbone = _fresh_backbone(model)
    fine_tuned, history = finetune(backbone, train, validation, seed=seed, **finetune_args)
    validation_accuracy = None
    if validation is not None and history.history.get("val_accuracy"):
        validation_accuracy = float(history.history["val_accuracy"][-1])
    return {
        "run": run,
        "seed": seed,
        "validation_accuracy": validation_accuracy,
        "test_accuracy": evaluate_accuracy(fine_tuned, test, finetune_args["crop"]),
    }


def _task_row(splits: TaskSplits, test, options: dict, run_rows: list) -> dict:
    """The results table's row of a task: what it is, how it was trained, every run and the
    medians over the runs (see `VtabResults.rows`)."""
    task = splits.task
    return {
        "task": task.name,
        "title": task.title,
        "group": task.group,
        "num_classes": task.num_classes,
        "tfds_name": task.tfds_name,
        "tfds_version": splits.tfds_version,
        "random_flip": options["random_flip"],
        "random_crop": options["random_crop"],
        "test_examples": test.num_examples,
        "runs": run_rows,
        "validation_accuracy": _median([row["validation_accuracy"] for row in run_rows]),
        "test_accuracy": _median([row["test_accuracy"] for row in run_rows]),
    }


@dataclasses.dataclass
class FewShotResults:
    """Test accuracies of a few-shot run: `rows` of {shots, seed, test_accuracy}."""

    name: str
    rows: list

    def summary(self) -> dict:
        """{shots: (min, median, max)} of the test accuracy over the runs, as the authors
        report few-shot results (big_transfer README: "min<-median->max result of at least
        five runs").

        Example:
            >>> results.summary()[5]
            (0.52, 0.558, 0.602)
        """
        summary = {}
        for shots in sorted({row["shots"] for row in self.rows}):
            values = [row["test_accuracy"] for row in self.rows if row["shots"] == shots]
            summary[shots] = (
                float(np.min(values)),
                float(np.median(values)),
                float(np.max(values)),
            )
        return summary

    def to_markdown(self) -> str:
        """A Markdown table: examples per class, runs, min <- median -> max test accuracy (%)."""
        lines = [
            f"Few-shot transfer on {self.name}",
            "",
            "| Examples per class | Runs | Test acc. (%), min <- **median** -> max |",
            "|---:|---:|---:|",
        ]
        for shots, (low, median, high) in self.summary().items():
            runs = sum(1 for row in self.rows if row["shots"] == shots)
            lines.append(
                f"| {shots} | {runs} | {100 * low:.1f} <- **{100 * median:.1f}** -> "
                f"{100 * high:.1f} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str) -> tuple[str, str]:
        """Writes `few_shot_results.md` and `.json`, replacing them if they exist (see
        `refuse_existing_results` to refuse that); returns their paths."""
        record = {"name": self.name, "runs": self.rows}
        return _write_results(output_dir, FEW_SHOT_RESULTS, self.to_markdown(), record)


def run_few_shot(
    model,
    train: data_lib.ImageSource,
    test: data_lib.ImageSource,
    *,
    shots: Sequence[int] = FEW_SHOT_EXAMPLES,
    runs: int = FEW_SHOT_RUNS,
    seeds: Sequence[int] | None = None,
    weights: str | None = None,
    output_dir: str | None = None,
    batch_size: int = 512,
    steps: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    max_test_examples: int | None = None,
    overwrite: bool = False,
    **finetune_options,
) -> FewShotResults:
    """Fine-tunes on `k` examples per class of `train` for every k in `shots` and seed.

    The examples are drawn with `bit_tf.data.few_shot(train, k, seed)`; each run starts from a
    fresh backbone and uses the BiT-HyperRule (500 steps below 20k examples; a batch larger
    than the k-shot set simply repeats it, as the authors' loader does).

    Args:
        model: a model name with `weights`, or a function returning a fresh Keras backbone.
        train, test: `bit_tf.data.ImageSource`s, e.g. `bit_tf.data.from_tfds("cifar10")` and
            `from_tfds("cifar10", split="test")`, or a VTAB task's splits.
        shots: examples per class (BiT: 1, 5, 10, 25).
        runs: runs per k, with seeds 0 .. runs - 1 (the authors' README: at least five).
        seeds: the seeds of the runs instead, one run per seed and k.
        output_dir: where `few_shot_results.md` / `.json` go (rewritten after each run). If it
            already holds them, `TargetExistsError` is raised before any work, unless
            `overwrite`.
        overwrite: replace the results files an earlier run left in `output_dir`.
        Other arguments as for `run_vtab`.

    Raises:
        TargetExistsError: `output_dir` holds `few_shot_results.md` or `.json` and `overwrite`
            is False (before any model is built).

    Example:
        >>> train = bit_tf.data.from_tfds("oxford_iiit_pet", split="train")
        >>> test = bit_tf.data.from_tfds("oxford_iiit_pet", split="test")
        >>> results = run_few_shot("BiT-M-R50x1", train, test, weights="BiT-M-R50x1")
        >>> results.summary()[5]
        >>> # Again with output_dir="runs/pets" twice: TargetExistsError, unless overwrite=True.
    """
    from bit_tf.finetune.recipe import finetune

    if seeds is None:
        _check_runs(runs)
        seeds = range(runs)
    refuse_existing_results(output_dir, FEW_SHOT_RESULTS, overwrite)
    model_name = _model_name(model)
    results = FewShotResults(train.name, [])
    test = _limited(test, max_test_examples)
    for shot_count in shots:
        for seed in seeds:
            subset = data_lib.few_shot(train, int(shot_count), seed=int(seed))
            run_resize, run_crop = _resolution(subset, resize, crop, model_name, finetune_options)
            fine_tuned, _ = finetune(
                _fresh_backbone(model),
                subset,
                None,
                weights=weights,
                batch_size=batch_size,
                steps=steps,
                resize=run_resize,
                crop=run_crop,
                seed=int(seed),
                **finetune_options,
            )
            results.rows.append(
                {
                    "shots": int(shot_count),
                    "seed": int(seed),
                    "train_examples": subset.num_examples,
                    "test_examples": test.num_examples,
                    "test_accuracy": evaluate_accuracy(fine_tuned, test, run_crop),
                }
            )
            if output_dir:
                results.write(output_dir)
    return results


__all__ = [
    "CLEVR_DISTANCE_THRESHOLDS",
    "DatasetUnavailableError",
    "FEW_SHOT_EXAMPLES",
    "FEW_SHOT_RESULTS",
    "FEW_SHOT_RUNS",
    "GROUPS",
    "KITTI_DISTANCE_THRESHOLDS",
    "RUNS_PER_TASK",
    "TASKS",
    "TFDS_VERSION_NOTES",
    "VTAB_RESULTS",
    "FewShotResults",
    "Task",
    "TaskSplits",
    "VtabResults",
    "binned_label",
    "clevr_count_label",
    "clevr_distance_label",
    "evaluate_accuracy",
    "get_task",
    "grouped_label",
    "kitti_distance_label",
    "load_task",
    "refuse_existing_results",
    "run_few_shot",
    "run_vtab",
]
