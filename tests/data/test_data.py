"""Input pipelines: arrays, the digits default, TFDS (mocked by TFDS) and real image files."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bit_tf.data import image_folder
from bit_tf.data import pipelines as data


def _batches(dataset, count):
    return [batch for _, batch in zip(range(count), dataset.as_numpy_iterator(), strict=False)]


@pytest.fixture(scope="module")
def array_source():
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(60, 20, 24, 3), dtype=np.uint8)
    labels = np.arange(60) % 4
    return data.from_arrays(images, labels)


def test_train_batches_have_crop_shape_unit_range_and_one_hot_labels(array_source):
    images, labels = _batches(data.train_pipeline(array_source, 8, resize=20, crop=16), 1)[0]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    assert labels.shape == (8, 4)
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
    assert set(np.unique(labels)) == {0.0, 1.0}


def test_eval_batches_resize_to_crop_in_order_and_keep_the_last_batch(array_source):
    batches = _batches(data.eval_pipeline(array_source, 25, crop=16), 10)
    assert [len(labels) for _, labels in batches] == [25, 25, 10]
    assert batches[0][0].shape == (25, 16, 16, 3)
    labels = np.concatenate([labels.argmax(axis=1) for _, labels in batches])
    np.testing.assert_array_equal(labels, np.arange(60) % 4)


def test_same_seed_same_batches_other_seed_other_batches(array_source):
    def first(seed):
        pipeline = data.train_pipeline(array_source, 8, 20, 16, mixup_alpha=0.2, seed=seed)
        return _batches(pipeline, 3)

    run_a, run_b, run_c = first(7), first(7), first(8)
    for (images_a, labels_a), (images_b, labels_b) in zip(run_a, run_b, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(run_a[0][0], run_c[0][0])


def test_mixup_mixes_labels_that_sum_to_one(array_source):
    pipeline = data.train_pipeline(array_source, 16, 20, 16, mixup_alpha=0.4, seed=1)
    images, labels = _batches(pipeline, 1)[0]
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert ((labels > 0.0) & (labels < 1.0)).any(), "MixUp with alpha 0.4 mixed nothing"
    assert 0.0 <= images.min() and images.max() <= 1.0


@pytest.mark.parametrize("examples_per_class", [1, 3])
def test_few_shot_draws_exactly_k_per_class_deterministically(array_source, examples_per_class):
    subset = data.few_shot(array_source, examples_per_class, seed=5)
    again = data.few_shot(array_source, examples_per_class, seed=5)
    other = data.few_shot(array_source, examples_per_class, seed=6)
    assert subset.num_examples == 4 * examples_per_class
    np.testing.assert_array_equal(np.bincount(subset.labels()), examples_per_class)
    read = np.array([label for _, label in subset.dataset().as_numpy_iterator()])
    np.testing.assert_array_equal(np.sort(read), np.sort(subset.labels()))
    first = np.stack([image for image, _ in subset.dataset().as_numpy_iterator()])
    np.testing.assert_array_equal(
        first, np.stack([image for image, _ in again.dataset().as_numpy_iterator()])
    )
    assert not np.array_equal(
        first, np.stack([image for image, _ in other.dataset().as_numpy_iterator()])
    )


def test_few_shot_asking_for_more_than_a_class_has_names_the_class(array_source):
    with pytest.raises(ValueError, match="Class 0 .* only 15 example"):
        data.few_shot(array_source, 16)


def test_digits_default_holds_out_a_fifth_of_every_class():
    train, validation = data.load_digits()
    assert train.num_examples + validation.num_examples == 1797
    assert abs(validation.num_examples - 0.2 * 1797) < 10
    assert validation.num_classes == 10 and train.image_size == (8, 8)
    assert np.bincount(validation.labels()).min() >= 30


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 1, 2, 5], r"in \[0, 3\).*\[5\]"),
        ([0, -1, 1, 2], r"\[-1\]"),
        ([0, 0, 0, 0], "2 classes"),
    ],
)
def test_bad_labels_stop_before_training(labels, message):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    num_classes = 3 if max(labels) > 0 else None
    with pytest.raises(ValueError, match=message):
        data.from_arrays(images, np.asarray(labels), num_classes=num_classes)


def test_float_images_outside_unit_range_are_refused():
    with pytest.raises(ValueError, match="from 0.0 to 255.0"):
        data.from_arrays(
            np.linspace(0.0, 255.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3), np.array([0, 1])
        )


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=100):
        source = data.from_tfds("mnist", split="train", data_dir=str(tmp_path))
        assert source.num_examples == 100 and source.num_classes == 10
        assert source.image_size == (28, 28)
        images, labels = _batches(data.train_pipeline(source, 10, 36, 32, seed=0), 1)[0]
        assert images.shape == (10, 32, 32, 3) and labels.shape == (10, 10)
        assert 0.0 <= images.min() and images.max() <= 1.0
        subset = data.few_shot(source, 1, seed=0)
        read = [int(label) for _, label in subset.dataset().as_numpy_iterator()]
        assert sorted(read) == list(range(10))
        assert sorted(read) == sorted(subset.labels().tolist())


def _write_images(root):
    """A class folder with every kind of file a scraped data set holds."""
    generator = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)

    def rgb(height=30, width=40):
        return generator.integers(0, 256, (height, width, 3), dtype=np.uint8)

    Image.fromarray(rgb()).save(root / "cat" / "rgb.jpg", quality=90)
    Image.fromarray(rgb()).save(root / "cat" / "rgb.png")
    Image.fromarray(rgb()[..., 0]).save(root / "cat" / "gray.jpg")
    Image.fromarray(np.dstack([rgb(), np.full((30, 40), 128, np.uint8)])).save(
        root / "cat" / "rgba.png"
    )
    Image.fromarray(rgb()).convert("P").save(root / "dog" / "palette.png")
    Image.fromarray(rgb()).convert("CMYK").save(root / "dog" / "cmyk.jpg")
    sixteen = (np.linspace(0, 65535, 30 * 40).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "dog" / "depth16.png")
    Image.fromarray(rgb(300, 300)).save(root / "dog" / "huge.png")
    whole = (root / "cat" / "rgb.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


def test_image_folder_reads_every_mode_and_skips_bad_files(tmp_path, caplog):
    _write_images(tmp_path)
    with caplog.at_level(logging.WARNING):
        source = data.from_folder(tmp_path, max_pixels=50_000)
    assert source.class_names == ("cat", "dog")
    assert source.num_examples == 7
    np.testing.assert_array_equal(np.bincount(source.labels()), [4, 3])
    skipped = {path.split("/")[-1]: reason for path, reason in source.skipped}
    assert set(skipped) == {"huge.png", "truncated.jpg", "empty.jpg", "notes.txt", "garbage.png"}
    assert "too large" in skipped["huge.png"] and "0 bytes" in skipped["empty.jpg"]
    assert "skipped 5 unreadable file(s)" in caplog.text

    examples = list(source.dataset().as_numpy_iterator())
    assert len(examples) == 7
    for image, _ in examples:
        assert image.shape == (30, 40, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
    depth16 = image_folder.read_image(str(tmp_path / "dog" / "depth16.png"))
    np.testing.assert_allclose(depth16[0, 0], 0.0)
    np.testing.assert_allclose(depth16[-1, -1], 1.0)
    assert len(np.unique(depth16[..., 0])) > 256, "16-bit precision was lost"
    batches = _batches(data.train_pipeline(source, 7, 32, 28, seed=0, repeat=False), 5)
    assert len(batches) == 1 and batches[0][0].shape == (7, 28, 28, 3)


def test_image_folder_errors_stop_before_training(tmp_path):
    with pytest.raises(image_folder.ImageFolderError, match="does not exist"):
        data.from_folder(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(image_folder.ImageFolderError, match="1 class subfolder.*at least 2"):
        data.from_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(image_folder.ImageFolderError, match="'empty_class' have no readable"):
        data.from_folder(tmp_path)


def test_pipeline_output_signature_is_fixed(array_source):
    spec = data.train_pipeline(array_source, 8, 20, 16).element_spec
    assert spec[0] == tf.TensorSpec((8, 16, 16, 3), tf.float32)
    assert spec[1] == tf.TensorSpec((8, 4), tf.float32)


def _one_of_each_class():
    # Left-right asymmetric images (a ramp across the width), one per class, so that a flip, a
    # crop or a resize shows.
    ramp = np.linspace(0.0, 1.0, 24, dtype=np.float32)[None, :, None]
    images = np.stack(
        [np.broadcast_to(ramp * (0.5 + index / 16), (20, 24, 3)) for index in range(8)]
    )
    return images, data.from_arrays(images, np.arange(8))


def _unmixed_images_by_class(pipeline):
    (images, labels), *_ = _batches(pipeline, 1)
    return images[np.argsort(labels.argmax(axis=1))]


def test_without_crops_and_flips_images_are_resized_straight_to_the_crop_size():
    images, source = _one_of_each_class()
    pipeline = data.train_pipeline(
        source, 8, resize=20, crop=12, seed=0, random_flip=False, random_crop=False
    )
    expected = tf.image.resize(images, (12, 12)).numpy()
    np.testing.assert_allclose(_unmixed_images_by_class(pipeline), expected, atol=1e-6)


def test_flips_alone_mirror_some_images_and_keep_the_rest_whole():
    images, source = _one_of_each_class()
    pipeline = data.train_pipeline(source, 8, 20, 12, seed=3, random_crop=False)
    resized = tf.image.resize(images, (12, 12)).numpy()
    got = _unmixed_images_by_class(pipeline)
    flipped = [
        np.allclose(image, reference[:, ::-1], atol=1e-6)
        for image, reference in zip(got, resized, strict=True)
    ]
    whole = [
        np.allclose(image, reference, atol=1e-6)
        for image, reference in zip(got, resized, strict=True)
    ]
    assert all(a or b for a, b in zip(flipped, whole, strict=True))
    assert any(flipped) and any(whole)


def test_crops_alone_never_mirror_an_image():
    images, source = _one_of_each_class()
    pipeline = data.train_pipeline(source, 8, 20, 12, seed=3, random_flip=False)
    got = _unmixed_images_by_class(pipeline)
    # The ramp rises left to right in every crop; a flip would make it fall.
    assert np.all(np.diff(got[:, 0, :, 0], axis=1) > 0)
