"""VTAB-1k task definitions, derived labels and the VTAB / few-shot runners (TFDS mocked)."""

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import bit_tf
from bit_tf.data import pipelines as data
from bit_tf.evaluation import vtab
from bit_tf.training.atomic import TargetExistsError

# The seed's VTAB table: (title, group, classes) of the 19 tasks.
SEED_TABLE = {
    "Caltech101": ("Natural", 102),
    "CIFAR-100": ("Natural", 100),
    "DTD": ("Natural", 47),
    "Flowers102": ("Natural", 102),
    "Pets": ("Natural", 37),
    "Sun397": ("Natural", 397),
    "SVHN": ("Natural", 10),
    "EuroSAT": ("Specialized", 10),
    "Resisc45": ("Specialized", 45),
    "Patch Camelyon": ("Specialized", 2),
    "Retinopathy": ("Specialized", 5),
    "Clevr/count": ("Structured", 8),
    "Clevr/distance": ("Structured", 6),
    "dSprites/location": ("Structured", 16),
    "dSprites/orientation": ("Structured", 16),
    "SmallNORB/azimuth": ("Structured", 18),
    "SmallNORB/elevation": ("Structured", 9),
    "DMLab": ("Structured", 6),
    "KITTI/distance": ("Structured", 4),
}
# Tasks whose labels come from per-object annotations: TFDS's random mock gives the fields of
# one object list different lengths, so these are tested with consistent examples below.
OBJECT_TASKS = ("clevr_count", "clevr_distance", "kitti_distance")


def test_the_19_tasks_of_the_seed_table():
    assert {task.title: (task.group, task.num_classes) for task in vtab.TASKS.values()} == (
        SEED_TABLE
    )
    with pytest.raises(ValueError, match="'imagenet'.*caltech101"):
        vtab.get_task("imagenet")


def test_every_task_yields_800_200_and_the_full_test_split_under_mock_data():
    with tfds.testing.mock_data(num_examples=1000):
        for name, task in vtab.TASKS.items():
            if name in OBJECT_TASKS:
                continue
            splits = vtab.load_task(name)
            sizes = [splits.train.num_examples, splits.validation.num_examples]
            assert sizes + [splits.test.num_examples] == [800, 200, 1000], name
            assert splits.train_and_validation.num_examples == 1000
            for source in (splits.train, splits.validation, splits.test):
                assert source.num_classes == task.num_classes, name
            labels = splits.validation.labels()
            assert len(labels) == 200 and labels.min() >= 0 and labels.max() < task.num_classes
        # Images come out float32 in [0, 1] with 3 channels, also from grayscale SmallNORB.
        image, label = next(iter(vtab.load_task("smallnorb_elevation").test.dataset()))
        assert image.shape == (96, 96, 3) and image.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 1.0
        assert 0 <= int(label) < 9


def _object_examples(builder, split, decoders=None, read_config=None, **unused):
    """Clevr- and KITTI-shaped examples with known objects (example i has 3 + i % 8 objects)."""
    del builder, split, decoders, read_config, unused
    count = 1000
    objects = 3 + np.arange(count) % 8
    # Closest Clevr depth per example cycles through values just inside each distance bin.
    clevr_depths = np.array([7.9, 8.2, 8.7, 9.2, 9.7, 12.0])[np.arange(count) % 6]
    # KITTI: cycles through closest vehicle at 5 m, 15 m, 30 m, and no vehicle at all.
    kitti_depth = np.array([5.0, 15.0, 30.0, np.nan])[np.arange(count) % 4]

    def generate():
        for index in range(count):
            size = np.zeros(objects[index], np.int64)
            pixel_coords = np.full((objects[index], 3), 20.0, np.float32)
            pixel_coords[-1, 2] = clevr_depths[index]
            if np.isnan(kitti_depth[index]):
                types = np.array([3, 5], np.int64)  # a pedestrian and a cyclist, both close
                location = np.array([[0, 0, 2.0], [0, 0, 3.0]], np.float32)
            else:
                types = np.array([3, 0, 2], np.int64)  # pedestrian closer than car and truck
                location = np.array(
                    [[0, 0, 1.0], [0, 0, kitti_depth[index]], [0, 0, 50.0]], np.float32
                )
            yield {
                "image": np.full((12, 16, 3), index % 256, np.uint8),
                "objects": {
                    "size": size,
                    "pixel_coords": pixel_coords,
                    "type": types,
                    "location": location,
                },
            }

    signature = {
        "image": tf.TensorSpec((12, 16, 3), tf.uint8),
        "objects": {
            "size": tf.TensorSpec((None,), tf.int64),
            "pixel_coords": tf.TensorSpec((None, 3), tf.float32),
            "type": tf.TensorSpec((None,), tf.int64),
            "location": tf.TensorSpec((None, 3), tf.float32),
        },
    }
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(count))


def test_object_tasks_derive_vtab_labels():
    with tfds.testing.mock_data(as_dataset_fn=_object_examples):
        count = vtab.load_task("clevr_count")
        distance = vtab.load_task("clevr_distance")
        kitti = vtab.load_task("kitti_distance")
        index = np.arange(800)
        # Clevr/count: number of objects - 3.
        np.testing.assert_array_equal(count.train.labels(), index % 8)
        # Clevr/distance: 7.9 -> 0 (0 < d <= 8), 8.2 -> 1, 8.7 -> 2, 9.2 -> 3, 9.7 -> 4, 12 -> 5.
        np.testing.assert_array_equal(distance.train.labels(), index % 6)
        # KITTI/distance: closest car/van/truck (pedestrians and cyclists ignored) at 5 m -> 0,
        # 15 m -> 1, 30 m -> 2; no vehicle -> 3.
        np.testing.assert_array_equal(kitti.train.labels(), index % 4)
        assert [source.num_examples for source in (kitti.train, kitti.validation, kitti.test)] == [
            800,
            200,
            1000,
        ]
        image, label = next(iter(count.validation.dataset()))
        assert image.shape == (12, 16, 3) and int(label) == 0


def test_derived_label_functions_match_the_vtab_definitions():
    thresholds = vtab.CLEVR_DISTANCE_THRESHOLDS
    # VTAB: label = max{i : thresholds[i] < d}; a depth equal to a threshold stays below it.
    assert [int(vtab.binned_label(d, thresholds, 6)) for d in (8.0, 8.0001, 10.0, 10.5)] == [
        0,
        1,
        4,
        5,
    ]
    location = vtab.get_task("dsprites_location").label
    orientation = vtab.get_task("dsprites_orientation").label
    x_positions = tf.range(32)
    np.testing.assert_array_equal(location({"label_x_position": x_positions}), np.arange(32) // 2)
    # 40 orientations into 16 classes: floor(value / 2.5).
    np.testing.assert_array_equal(
        orientation({"label_orientation": tf.range(40)}), np.floor(np.arange(40) / 2.5)
    )
    azimuth = vtab.get_task("smallnorb_azimuth").label({"label_azimuth": tf.constant(17)})
    elevation = vtab.get_task("smallnorb_elevation").label({"label_elevation": tf.constant(8)})
    assert (int(azimuth), int(elevation)) == (17, 8)


def test_out_of_range_derived_labels_are_reported():
    # TFDS's random mock gives Clevr scenes of 5 to 49 objects: not a valid Clevr/count label.
    with tfds.testing.mock_data(num_examples=1000):
        splits = vtab.load_task("clevr_count")
        with pytest.raises(tf.errors.InvalidArgumentError, match="clevr_count.*outside"):
            splits.validation.labels()


def _tiny_backbone():
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)


def test_run_vtab_writes_every_run_the_median_and_group_and_overall_means(tmp_path):
    output_dir = str(tmp_path / "vtab")
    with tfds.testing.mock_data(num_examples=1000):
        results = vtab.run_vtab(
            _tiny_backbone,
            ["svhn", "dsprites_location"],
            output_dir=output_dir,
            batch_size=8,
            steps=1,
            resize=32,
            crop=32,
            max_test_examples=24,
            seed=5,
            runs=2,
            jit_compile=False,
            verbose=0,
        )
    assert [row["task"] for row in results.rows] == ["svhn", "dsprites_location"]
    for row in results.rows:
        assert [(run["run"], run["seed"]) for run in row["runs"]] == [(0, 5), (1, 6)]
        per_run = [run["test_accuracy"] for run in row["runs"]]
        assert all(0.0 <= value <= 1.0 for value in per_run)
        assert row["test_accuracy"] == float(np.median(per_run))
        assert row["test_examples"] == 24
    svhn, location = results.rows
    assert (svhn["tfds_name"], svhn["tfds_version"]) == ("svhn_cropped:3.*.*", "3.1.0")
    assert location["tfds_name"].startswith("dsprites:2.")
    assert location["tfds_version"].startswith("2.")
    # Each task trains with its own augmentation: no flips nor crops for dSprites/location.
    assert (svhn["random_flip"], svhn["random_crop"]) == (True, True)
    assert (location["random_flip"], location["random_crop"]) == (False, False)
    accuracies = [row["test_accuracy"] for row in results.rows]
    means = results.means()
    assert means["Natural"] == accuracies[0] and means["Structured"] == accuracies[1]
    assert means["Overall"] == pytest.approx(np.mean(accuracies))
    table = open(os.path.join(output_dir, "vtab_results.md")).read()
    for text in ("SVHN", "dSprites/location", "Natural mean", "Structured mean", "Overall mean"):
        assert text in table
    assert "svhn_cropped 3.1.0" in table
    runs_cell = ", ".join(f"{100 * run['test_accuracy']:.1f}" for run in svhn["runs"])
    assert runs_cell in table
    saved = json.load(open(os.path.join(output_dir, "vtab_results.json")))
    assert saved["means"] == pytest.approx(means)
    assert [len(row["runs"]) for row in saved["tasks"]] == [2, 2]


def test_augmentation_per_task_follows_the_papers_supplement():
    no_flip = {name for name, task in vtab.TASKS.items() if not task.random_flip}
    no_crop = {name for name, task in vtab.TASKS.items() if not task.random_crop}
    assert no_flip == {"dsprites_location", "dsprites_orientation", "smallnorb_azimuth"}
    assert no_crop == {
        "clevr_count",
        "clevr_distance",
        "dmlab",
        "kitti_distance",
        "dsprites_location",
    }


# The TFDS versions google-research/task_adaptation reads (task_adaptation/data/*.py).
VTAB_TFDS_VERSIONS = {
    "caltech101": "caltech101:3.*.*",
    "cifar100": "cifar100:3.*.*",
    "dtd": "dtd:3.*.*",
    "oxford_flowers102": "oxford_flowers102:2.*.*",
    "oxford_iiit_pet": "oxford_iiit_pet:3.*.*",
    "sun397": "sun397/tfds:4.*.*",
    "svhn": "svhn_cropped:3.*.*",
    "eurosat": "eurosat/rgb:2.*.*",
    "resisc45": "resisc45:3.*.*",
    "patch_camelyon": "patch_camelyon:2.*.*",
    "diabetic_retinopathy": "diabetic_retinopathy_detection/btgraham-300:3.*.*",
    "clevr_count": "clevr:3.*.*",
    "clevr_distance": "clevr:3.*.*",
    "dsprites_location": "dsprites:2.*.*",
    "dsprites_orientation": "dsprites:2.*.*",
    "smallnorb_azimuth": "smallnorb:2.*.*",
    "smallnorb_elevation": "smallnorb:2.*.*",
    "dmlab": "dmlab:2.0.1",
    "kitti_distance": "kitti:3.1.0",
}


def test_tasks_pin_the_tfds_versions_of_vtab_where_tfds_still_builds_them():
    for name, task in vtab.TASKS.items():
        if name in vtab.TFDS_VERSION_NOTES:
            assert task.tfds_name != VTAB_TFDS_VERSIONS[name], name
        else:
            assert task.tfds_name == VTAB_TFDS_VERSIONS[name], name
        # The installed TFDS resolves the pinned version (no data is needed for that).
        version = tfds.builder(task.tfds_name).info.version
        assert str(version).split(".")[0] == task.tfds_name.split(":")[1].split(".")[0], name
    assert set(vtab.TFDS_VERSION_NOTES) == {"oxford_iiit_pet"}


def test_the_cli_runs_three_times_by_default():
    # In a process of its own: absl flags of two commands cannot share one process.
    script = "from bit_cli import vtab; print(vtab.FLAGS['runs'].default)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == vtab.RUNS_PER_TASK == 3


def test_few_shot_runner_draws_k_examples_per_class_and_replaces_results_only_if_asked(
    tmp_path,
):
    built = []

    def counted_backbone():
        built.append(1)
        return _tiny_backbone()

    train, test = data.load_digits()
    settings = {"output_dir": str(tmp_path), "batch_size": 8, "steps": 2, "resize": 32, "crop": 32}
    settings.update(max_test_examples=40, jit_compile=False, verbose=0)
    results = vtab.run_few_shot(counted_backbone, train, test, shots=(1, 2), seeds=(5,), **settings)
    assert [(row["shots"], row["seed"], row["train_examples"]) for row in results.rows] == [
        (1, 5, 10),
        (2, 5, 20),
    ]
    assert set(results.summary()) == {1, 2}
    files = [tmp_path / "few_shot_results.md", tmp_path / "few_shot_results.json"]
    table = files[0].read_text()
    assert "| 1 | 1 |" in table and "| 2 | 1 |" in table
    assert len(built) == 2
    before = [(path.read_bytes(), path.stat().st_mtime_ns) for path in files]
    # A rerun with other shots would drop the 2-shot row: refused before a model is built.
    refused = r"few_shot_results\.md already exists.*overwrite=True \(bit-vtab --overwrite\)"
    with pytest.raises(TargetExistsError, match=refused + ".*another output_dir"):
        vtab.run_few_shot(counted_backbone, train, test, shots=(1,), seeds=(5,), **settings)
    assert len(built) == 2
    assert [(path.read_bytes(), path.stat().st_mtime_ns) for path in files] == before
    replaced = vtab.run_few_shot(
        counted_backbone, train, test, shots=(1,), seeds=(3,), overwrite=True, **settings
    )
    assert len(built) == 3
    saved = json.loads(files[1].read_text())
    assert [(run["shots"], run["seed"]) for run in saved["runs"]] == [(1, 3)]
    assert files[0].read_text() == replaced.to_markdown()


def test_a_vtab_run_into_a_folder_with_results_is_refused_before_any_work(tmp_path):
    built = []
    (tmp_path / "vtab_results.json").write_text("{}")
    # Refused before a dataset is read (none is here, and download=False) or a model built,
    # also when only the .json is left.
    with pytest.raises(TargetExistsError, match=r"vtab_results\.json already exists.*--overwrite"):
        vtab.run_vtab(
            lambda: built.append(1),
            ["svhn"],
            output_dir=str(tmp_path),
            data_dir=str(tmp_path / "no_data"),
            download=False,
        )
    assert not built and (tmp_path / "vtab_results.json").read_text() == "{}"


def test_few_shot_results_are_min_median_max_over_at_least_five_runs():
    # big_transfer README L121-122: "min<-median->max result of at least five runs".
    assert inspect.signature(vtab.run_few_shot).parameters["runs"].default == 5
    rows = [{"shots": 5, "seed": seed, "test_accuracy": value}
            for seed, value in enumerate([0.6, 0.5, 0.9, 0.7, 0.8])]  # fmt: skip
    results = vtab.FewShotResults("digits", rows)
    assert results.summary() == {5: (0.5, 0.7, 0.9)}
    assert "| 5 | 5 | 50.0 <- **70.0** -> 90.0 |" in results.to_markdown()
    with pytest.raises(ValueError, match="runs must be a positive integer, got 0"):
        vtab.run_few_shot(_tiny_backbone, *data.load_digits(), runs=0)


def test_every_vtab_augmentation_switch_names_its_source():
    for task in vtab.TASKS.values():
        if task.random_flip and task.random_crop and task.name != "smallnorb_elevation":
            assert task.augmentation_source == vtab.STANDARD_AUGMENTATION
        else:
            assert "task_adaptation" in task.augmentation_source, task.name
            assert task.augmentation_source != vtab.STANDARD_AUGMENTATION
