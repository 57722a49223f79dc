"""Real-size data: memory that does not grow with the number of images, batches that mix every
class of a folder read class by class, a fresh whole-dataset order every epoch, exact restarts,
metadata folders, unreadable entries and damaged files in real folders, encoded-bytes caches,
reduced-scale JPEG decoding, and micro-batches planned from the machine's memory."""

import io
import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from bit_tf.data import image_folder
from bit_tf.data import pipelines as data
from bit_tf.data.encoded_cache import CachePolicy, FileBytesCache
from bit_tf.distill.data import consistent_batches
from bit_tf.training.micro_batch import Architecture, plan_accumulation, training_bytes

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_class_folder(root, classes: int, per_class: int, size: int = 16, seed: int = 0):
    """`classes` subfolders of `per_class` small random JPEGs each; returns `root`."""
    generator = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=80)
    return root


def first_batches(dataset, count):
    return [batch for _, batch in zip(range(count), dataset.as_numpy_iterator(), strict=False)]


# --- Order: a whole-dataset shuffle every epoch ---------------------------------------------


def test_every_batch_of_a_folder_read_class_by_class_mixes_the_classes(tmp_path):
    source = data.from_folder(write_class_folder(tmp_path, classes=12, per_class=40, size=8))
    pipeline = data.train_pipeline(source, 32, 8, 8, seed=0, random_crop=False)
    batches = first_batches(pipeline, 5)
    distinct = [len(np.unique(labels.argmax(axis=1))) for _, labels in batches]
    # A full shuffle of 12 balanced classes puts 11.8 distinct classes into a batch of 32 on
    # average; a shuffle window over the class-ordered files gave 1 or 2 in the first batches.
    assert min(distinct) >= 9, distinct
    seen = np.concatenate([labels.argmax(axis=1) for _, labels in batches])
    assert set(seen) == set(range(12))


def _unique_label_source(count=24):
    images = np.random.default_rng(0).integers(0, 256, (count, 6, 6, 3), dtype=np.uint8)
    return data.from_arrays(images, np.arange(count), num_classes=count)


def test_each_epoch_is_a_fresh_permutation_of_every_example():
    source = _unique_label_source()
    pipeline = data.train_pipeline(source, 8, 6, 6, seed=3, random_crop=False)
    labels = np.concatenate([labels.argmax(axis=1) for _, labels in first_batches(pipeline, 9)])
    epochs = labels.reshape(3, 24)
    for epoch in epochs:
        assert sorted(epoch) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("pipeline", ["train", "distill"])
def test_a_pipeline_started_at_batch_k_is_the_tail_of_the_one_started_at_0(pipeline):
    source = _unique_label_source()

    def batches(start_batch, count):
        if pipeline == "train":
            stream = data.train_pipeline(
                source, 8, 6, 4, mixup_alpha=0.4, seed=5, start_batch=start_batch
            )
        else:
            stream = consistent_batches(source, 8, 4, seed=5, start_batch=start_batch)
        return first_batches(stream, count)

    whole = batches(0, 7)
    resumed = batches(4, 3)  # 32 examples in: the second epoch, 8 examples into it
    for (images_a, labels_a), (images_b, labels_b) in zip(whole[4:], resumed, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)


# --- Memory against the number of images -----------------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys

    def high_water_mark():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    def reset_high_water_mark():
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")

    import bit_tf  # noqa: F401
    from bit_tf.data import pipelines as data
    from bit_tf.distill.data import consistent_batches

    source = data.from_folder(sys.argv[1])
    growth = {}
    for name in ("train", "distill"):
        reset_high_water_mark()
        before = high_water_mark()
        if name == "train":
            pipeline = data.train_pipeline(source, 16, 128, 112, mixup_alpha=0.1, seed=0)
        else:
            pipeline = consistent_batches(source, 16, 112, seed=0)
        for _ in pipeline.take(6):
            pass
        growth[name] = high_water_mark() - before
    print(json.dumps(growth), flush=True)
    # An iterator still alive when the interpreter exits, with decoding in flight: the
    # process must end anyway.
    alive = iter(data.train_pipeline(source, 16, 128, 112, seed=1))
    next(alive)
    """
)


def _pipeline_memory(folder) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(folder)],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": REPOSITORY, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM")
def test_pipeline_memory_does_not_grow_with_the_number_of_images_and_exit_is_clean(tmp_path):
    small = _pipeline_memory(write_class_folder(tmp_path / "small", 4, 50, size=48))
    large = _pipeline_memory(write_class_folder(tmp_path / "large", 4, 500, size=48))
    # The 1,800 more images are 350 MB of float32 pixels resized to 128x128 (fine-tuning's
    # shuffle buffer held those), 60 MB at their own 48x48 (distillation's); their records
    # (paths, and the cached encoded bytes of these small files) are about 2 MB.
    for name in ("train", "distill"):
        assert large[name] - small[name] < 32 * 2**20, (name, small, large)


# --- Real folders: metadata, unreadable entries, damaged files ------------------------------


def _broken_png() -> bytes:
    """A PNG whose header and end are whole and whose image data does not inflate."""
    whole = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(whole, format="PNG")
    signature_and_header = whole.getvalue()[:33]
    garbage = os.urandom(40)
    chunk = (
        len(garbage).to_bytes(4, "big")
        + b"IDAT"
        + garbage
        + zlib.crc32(b"IDAT" + garbage).to_bytes(4, "big")
    )
    return signature_and_header + chunk + whole.getvalue()[-12:]


def test_metadata_folders_and_files_are_neither_classes_nor_images(tmp_path):
    write_class_folder(tmp_path, classes=2, per_class=3)
    thumbnail = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    for folder in ("@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information", ".thumbs"):
        (tmp_path / folder).mkdir()
        thumbnail.save(tmp_path / folder / "thumb.jpg")
    (tmp_path / "class00" / "@eaDir" / "00000.jpg").mkdir(parents=True)
    thumbnail.save(tmp_path / "class00" / "@eaDir" / "00000.jpg" / "SYNOPHOTO_THUMB_M.jpg")
    (tmp_path / "class01" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "class01" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "class01" / "desktop.ini").write_text("[.ShellClassInfo]")
    source = data.from_folder(tmp_path)
    assert source.class_names == ("class00", "class01")
    assert source.num_examples == 6 and source.skipped == []


def test_unreadable_entries_and_damaged_files_are_skipped_and_counted(tmp_path, caplog):
    write_class_folder(tmp_path, classes=2, per_class=6)
    (tmp_path / "class00" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "class01" / "broken.png").write_bytes(_broken_png())
    locked = tmp_path / "class01" / "locked.jpg"
    locked.write_bytes((tmp_path / "class01" / "00000.jpg").read_bytes())
    locked.chmod(0)
    can_lock = not os.access(locked, os.R_OK)
    try:
        source = data.from_folder(tmp_path)
        reasons = {os.path.basename(path): reason for path, reason in source.skipped}
        assert "symbolic link" in reasons["gone.jpg"] and "nowhere.jpg" in reasons["gone.jpg"]
        if can_lock:
            assert "permission denied" in reasons["locked.jpg"]
        # The broken PNG passes the checks made before training (header and IEND are whole);
        # the pipeline skips it when its decoding fails, reports it and goes on.
        assert "broken.png" not in reasons
        with caplog.at_level("WARNING", logger="bit_tf.data.image_folder"):
            batches = first_batches(data.train_pipeline(source, 4, 16, 16, seed=0), 8)
        assert len(batches) == 8
        reasons = {os.path.basename(path): reason for path, reason in source.skipped}
        assert "corrupt" in reasons["broken.png"], reasons
        assert "broken.png" in caplog.text
        assert len(source.skipped) == 2 + can_lock
    finally:
        locked.chmod(0o644)
    if not can_lock:
        pytest.skip("running as root: chmod 000 does not stop reading, so that case is untested")


# --- Encoded-bytes caches and reduced-scale decoding ----------------------------------------


def test_encoded_bytes_are_cached_in_memory_within_the_budget_or_in_a_folder(tmp_path):
    files = write_class_folder(tmp_path / "photos", classes=2, per_class=4)
    paths = sorted(str(path) for path in files.rglob("*.jpg"))
    total = sum(os.path.getsize(path) for path in paths)
    in_memory = FileBytesCache.for_files(CachePolicy.parse("auto"), total)
    nothing = FileBytesCache.for_files(CachePolicy.parse("none"), total)
    on_disk = FileBytesCache.for_files(CachePolicy.parse(str(tmp_path / "cache")), total)
    for cache in (in_memory, nothing, on_disk):
        for path in paths:
            assert cache.read(path) == open(path, "rb").read()
    assert in_memory.cached_bytes == total and nothing.cached_bytes == 0
    assert len(os.listdir(tmp_path / "cache")) == len(paths)
    too_big = FileBytesCache.for_files(CachePolicy("auto", budget=total - 1), total)
    assert too_big.budget == 0
    source = data.from_folder(files)
    pipeline = data.train_pipeline(source, 4, 8, 8, seed=0, cache=str(tmp_path / "cache2"))
    first_batches(pipeline, 2)
    assert len(os.listdir(tmp_path / "cache2")) >= 8 - 4  # what the two batches read, at least


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_at_least_the_size_asked_and_upright():
    ramp = np.linspace(0, 255, 1600, dtype=np.float32)
    pixels = np.stack(
        [
            np.broadcast_to(ramp[None, :], (1200, 1600)),
            np.broadcast_to(ramp[:1200, None], (1200, 1600)),
            np.full((1200, 1600), 90.0),
        ],
        axis=-1,
    ).astype(np.uint8)
    encoded = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show upright
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=90, exif=exif)
    whole = image_folder.decode_for_pipeline(encoded.getvalue(), image_folder.MAX_PIXELS)
    reduced = image_folder.decode_for_pipeline(encoded.getvalue(), image_folder.MAX_PIXELS, 300)
    assert whole.shape == (1600, 1200, 3)  # upright: the EXIF orientation applied
    assert reduced.shape == (400, 300, 3)  # a quarter scale: still at least 300 on each side
    import tensorflow as tf

    def resized(image):
        return tf.image.resize(tf.cast(image, tf.float32) / 65535.0, (300, 300)).numpy()

    assert np.abs(resized(whole) - resized(reduced)).mean() < 0.01


# --- Micro-batches that fit the machine -----------------------------------------------------


def test_the_hyperrule_batch_is_split_into_micro_batches_that_fit_the_memory():
    available = 24 * 2**30
    plan = plan_accumulation("BiT-M-R50x1", 512, 384, available_bytes=available)
    assert plan.accumulation > 1 and plan.accumulation * plan.micro_batch == 512
    assert plan.estimate_bytes <= 0.6 * available < plan.batch_estimate_bytes
    architecture = Architecture.from_name("BiT-M-R50x1")
    bigger = training_bytes(architecture, 2 * plan.micro_batch, 384, "float32")
    assert bigger > 0.6 * available  # the fewest micro-batches that fit
    assert "gradient_accumulation_steps=" in plan.describe(512, 384)
    assert plan_accumulation("BiT-S-R26x1", 32, 32, available_bytes=available).accumulation == 1
    replicas = plan_accumulation("BiT-M-R50x1", 512, 384, replicas=8, available_bytes=available)
    assert replicas.micro_batch % 8 == 0
    half = plan_accumulation("BiT-M-R50x1", 512, 384, "mixed_bfloat16", available_bytes=available)
    assert half.accumulation <= plan.accumulation


def test_finetune_splits_the_batch_by_itself_says_so_once_and_a_resumed_run_keeps_its_split(
    tmp_path, caplog
):
    from bit_tf.finetune.recipe import FinetuneConfig, accumulation_and_micro_batch

    config = FinetuneConfig(batch_size=512, checkpoint_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="bit_tf.finetune"):
        accumulation, micro = accumulation_and_micro_batch(
            config, "BiT-M-R50x1", 384, available_bytes=24 * 2**30
        )
    assert accumulation > 1 and accumulation * micro == 512
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and f"gradient_accumulation_steps={accumulation}" in lines[0]
    # Given by the user, the number is kept; a resumed run keeps the one it started with.
    assert accumulation_and_micro_batch(
        FinetuneConfig(batch_size=512, gradient_accumulation_steps=4), "BiT-M-R50x1", 384
    ) == (4, 128)
    settings = {"batch_size": 512, "gradient_accumulation_steps": 8}
    (tmp_path / "progress.json").write_text(
        json.dumps({"settings": settings, "step": 3, "finished": False})
    )
    assert accumulation_and_micro_batch(config, "BiT-M-R50x1", 384) == (8, 64)
    with pytest.raises(ValueError, match="divisor of batch_size=512"):
        accumulation_and_micro_batch(FinetuneConfig(batch_size=512, gradient_accumulation_steps=3))


@pytest.mark.parametrize("cache", ["auto", "none", "folder"])
def test_tfds_images_stay_encoded_until_after_the_shuffle_cached_or_buffered(tmp_path, cache):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        source = data.from_tfds("mnist", split="train", data_dir=str(tmp_path / "tfds"))
        records = source.reader.records_in_order(source.indices)
        assert records.element_spec[0].dtype.name == "string"  # encoded PNG bytes
        policy = str(tmp_path / "cache") if cache == "folder" else cache
        pipeline = data.train_pipeline(source, 8, 28, 28, seed=0, cache=policy, random_flip=False)
        batches = first_batches(pipeline, 3)
        images = np.concatenate([batch_images for batch_images, _ in batches])
        labels = np.concatenate([batch_labels for _, batch_labels in batches])
        in_order = list(source.dataset().as_numpy_iterator())
    # One epoch of 24: every example once (a permutation, or a buffer as large as the data).
    expected = sorted(np.asarray([image for image, _ in in_order]).reshape(24, -1).tolist())
    assert sorted(images.reshape(24, -1).tolist()) == expected
    assert sorted(labels.argmax(axis=1).tolist()) == sorted(label for _, label in in_order)
    if cache == "folder":
        stored = [name for _, _, names in os.walk(tmp_path / "cache") for name in names]
        assert len([name for name in stored if name.endswith(".bin")]) == 24
