"""Upstream input: ImageNet-style TFRecords (single and multi-label), image folders, per-worker
shards, exact resumption, and the multi-label loss and metric on a real TFRecord file; the
augmentation and label encoding that UpstreamInput is made of."""

import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bit_tf.pretrain.augment import ExampleAugmentation
from bit_tf.pretrain.data import DataError, UpstreamInput, inception_crop, open_source
from bit_tf.pretrain.labels import LabelEncoder
from bit_tf.pretrain.recipe import PretrainConfig, pretrain, top1_hits, upstream_loss

NUM_CLASSES = 5


def _jpeg(rng, height=28, width=22):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(rng, height=20, width=30):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(path, examples):
    """ImageNet-style tf.train.Examples: image/encoded and image/class/label (int or list)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for encoded, labels in examples:
            labels = [labels] if isinstance(labels, int) else labels
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=labels)),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return str(path)


MULTI_LABELS = [[0, 2], 1, [3], [1, 4, 2], [], 0, [4, 0], [2, 3]]


def _softplus(value: float) -> float:
    return math.log1p(math.exp(value))


@pytest.fixture(scope="module")
def multi_label_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    examples = [
        (_jpeg(rng) if index % 2 else _png(rng), labels)
        for index, labels in enumerate(MULTI_LABELS)
    ]
    return _write(tmp_path_factory.mktemp("multi") / "train-00000-of-00001", examples)


def _first_epoch(upstream, batches):
    dataset = upstream.dataset_fn()(tf.distribute.InputContext())
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(batches)]


def test_multi_label_tfrecord_gives_multi_hot_labels_and_augmented_images(multi_label_file):
    source = open_source(multi_label_file)
    assert source.kind == "tfrecord" and source.num_examples() == len(MULTI_LABELS)
    upstream = UpstreamInput(
        source, NUM_CLASSES, 4, image_size=16, multi_label=True, shuffle_buffer=1
    )
    batches = _first_epoch(upstream, 2)
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    expected = np.zeros((len(MULTI_LABELS), NUM_CLASSES), np.float32)
    for row, ids in enumerate(MULTI_LABELS):
        expected[row, [ids] if isinstance(ids, int) else ids] = 1.0
    np.testing.assert_array_equal(labels, expected)
    images = np.concatenate([batch_images for batch_images, _ in batches])
    assert images.shape == (len(MULTI_LABELS), 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_inception_crop_is_deterministic_per_seed_and_varies_across_seeds():
    rng = np.random.default_rng(1)
    encoded = tf.constant(_jpeg(rng, 64, 48))
    first = inception_crop(encoded, tf.constant([1, 2], tf.int64), 24).numpy()
    again = inception_crop(encoded, tf.constant([1, 2], tf.int64), 24).numpy()
    other = inception_crop(encoded, tf.constant([1, 3], tf.int64), 24).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.05
    assert first.shape == (24, 24, 3)


def test_single_label_data_rejects_multi_label_examples_and_out_of_range_labels(tmp_path):
    rng = np.random.default_rng(2)
    two_labels = _write(tmp_path / "two.tfrecord", [(_jpeg(rng), [1, 2])])
    upstream = UpstreamInput(open_source(two_labels), NUM_CLASSES, 1, image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs --multi_label"):
        _first_epoch(upstream, 1)
    too_big = _write(tmp_path / "big.tfrecord", [(_jpeg(rng), 9)])
    upstream = UpstreamInput(open_source(too_big), NUM_CLASSES, 1, image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range.*5 classes"):
        _first_epoch(upstream, 1)
    # ImageNet TFRecords made by the TPU tools count from 1: --label_offset=-1 fits them.
    upstream = UpstreamInput(open_source(too_big), 9, 1, image_size=8, label_offset=-1)
    assert _first_epoch(upstream, 1)[0][1].tolist() == [8]


def test_workers_read_disjoint_shards_and_resume_exactly(tmp_path):
    rng = np.random.default_rng(3)
    count = 12
    for shard in range(2):
        _write(tmp_path / f"train-{shard}", [(_jpeg(rng), shard * 6 + i) for i in range(6)])
    source = open_source(str(tmp_path / "train-*"))
    upstream = UpstreamInput(source, count, 4, image_size=8, shuffle_buffer=4, seed=5)
    seen = []
    for worker in range(2):
        dataset = upstream.dataset_fn()(tf.distribute.InputContext(2, worker, 2))
        # Per-replica batch: 4 global / 2 pipelines; 3 batches = one epoch of a 6-image shard.
        batches = [labels.numpy().tolist() for _, labels in dataset.take(3)]
        assert all(len(batch) == 2 for batch in batches)
        seen.append(sorted(sum(batches, [])))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(count))

    # One pipeline, batch 4: an epoch is 3 steps. Resuming at step 4 (in the second epoch)
    # continues the very same stream: same images, same crops, same labels.
    fresh = upstream.dataset_fn()(tf.distribute.InputContext())
    stream = [(images.numpy(), labels.numpy()) for images, labels in fresh.take(6)]
    resumed = upstream.dataset_fn(start_step=4)(tf.distribute.InputContext())
    for (images, labels), (want_images, want_labels) in zip(
        resumed.take(2), stream[4:6], strict=True
    ):
        np.testing.assert_array_equal(labels.numpy(), want_labels)
        np.testing.assert_array_equal(images.numpy(), want_images)
    # The second epoch is a new order of the same examples.
    first_epoch = sorted(np.concatenate([labels for _, labels in stream[:3]]).tolist())
    assert first_epoch == list(range(count))
    assert [labels.tolist() for _, labels in stream[3:6]] != [
        labels.tolist() for _, labels in stream[:3]
    ]


def test_image_folder_labels_are_sorted_class_names_and_empty_classes_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    for name, count in (("tulip", 2), ("daisy", 3)):
        (tmp_path / "flowers" / name).mkdir(parents=True)
        for index in range(count):
            (tmp_path / "flowers" / name / f"{index}.jpg").write_bytes(_jpeg(rng))
    source = open_source(str(tmp_path / "flowers"))
    assert source.kind == "folder" and source.class_names == ["daisy", "tulip"]
    upstream = UpstreamInput(source, 2, 5, image_size=8, shuffle_buffer=1)
    labels = _first_epoch(upstream, 1)[0][1]
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    with pytest.raises(DataError, match="has 2 classes but the model head has 1"):
        UpstreamInput(source, 1, 5)
    (tmp_path / "flowers" / "rose").mkdir()
    with pytest.raises(DataError, match="rose.*has no images"):
        open_source(str(tmp_path / "flowers"))
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nowhere" / "train-*.tfrecord").replace("*", "x"))


def test_sigmoid_loss_and_precision_at_1_formulas():
    labels = tf.constant([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = tf.constant([[2.0, -1.0, 0.5], [0.3, 0.1, -2.0]])
    probabilities = 1 / (1 + np.exp(-logits.numpy()))
    expected = -(
        labels.numpy() * np.log(probabilities) + (1 - labels.numpy()) * np.log(1 - probabilities)
    ).sum(axis=1)
    np.testing.assert_allclose(upstream_loss(labels, logits, True).numpy(), expected, rtol=1e-6)
    # Top class 0 is a label of image 0; top class 0 is not a label of image 1.
    np.testing.assert_array_equal(top1_hits(labels, logits, True).numpy(), [1.0, 0.0])
    single = upstream_loss(tf.constant([2, 1]), logits, False).numpy()
    softmax = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(single, -np.log(softmax[[0, 1], [2, 1]]), rtol=1e-6)


def test_multi_label_bfloat16_pretraining_uses_sigmoid_loss_and_reports_precision_at_1(
    multi_label_file, tmp_path
):
    config = PretrainConfig(
        model="BiT-S-R18x1",
        dataset=multi_label_file,
        checkpoint_dir=str(tmp_path / "ckpt"),
        num_classes=NUM_CLASSES,
        multi_label=True,
        global_batch_size=8,
        train_steps=3,
        warmup_steps=1,
        base_learning_rate=0.01,
        image_size=16,
        units_per_block=(1, 1, 1, 1),
        shuffle_buffer=1,
        log_every=1,
        mixed_precision=True,
    )
    result = pretrain(config)
    assert result.step == 3
    assert result.model.get_layer("block1_unit01").compute_dtype == "bfloat16"
    assert {variable.dtype for variable in result.model.trainable_variables} == {"float32"}
    first = result.history[0]
    # The head kernel starts at zero and its bias at -10 (big_vision's multi-label start): every
    # logit is -10, so an image with k of the classes costs k softplus(10) + (classes - k)
    # softplus(-10), and the top class is class 0, right for the images that carry label 0.
    positives = np.mean([len(np.atleast_1d(labels)) for labels in MULTI_LABELS])
    expected = positives * _softplus(10.0) + (NUM_CLASSES - positives) * _softplus(-10.0)
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    with_label_zero = sum(1 for labels in MULTI_LABELS if labels == 0 or 0 in np.atleast_1d(labels))
    assert first["metric"] == pytest.approx(with_label_zero / len(MULTI_LABELS))
    assert all(np.isfinite(entry["loss"]) for entry in result.history)
    summary = json.loads((tmp_path / "ckpt" / "summary.json").read_text())
    assert summary["step"] == 3 and summary["weights"].endswith("BiT-S-R18x1.npz")
    assert [entry["step"] for entry in summary["history"]] == [1, 2, 3]
    # The finished run started again trains nothing and keeps its history.
    assert pretrain(config).step == 3
    again = json.loads((tmp_path / "ckpt" / "summary.json").read_text())
    assert again["steps_this_run"] == 0 and again["history"] == summary["history"]


def test_example_augmentation_is_inception_crop_seeded_by_seed_worker_epoch_and_position():
    image_bytes = tf.constant(_jpeg(np.random.default_rng(3)))
    augment = ExampleAugmentation(seed=7, worker=2, image_size=16)
    seed = tf.constant([7 * 1_000_003 + 2, 3 * 2**32 + 11], tf.int64)
    np.testing.assert_array_equal(
        augment(tf.constant(3), tf.constant(11), image_bytes).numpy(),
        inception_crop(image_bytes, seed, 16).numpy(),
    )
    other = augment(tf.constant(3), tf.constant(12), image_bytes).numpy()
    assert not np.array_equal(other, inception_crop(image_bytes, seed, 16).numpy())


def test_label_encoder_is_what_upstream_input_encodes_labels_with(multi_label_file):
    source = open_source(multi_label_file)
    upstream = UpstreamInput(source, NUM_CLASSES, 4, multi_label=True, label_offset=-1)
    encoder = LabelEncoder(NUM_CLASSES, multi_label=True, label_offset=-1)
    np.testing.assert_array_equal(
        upstream.encode_labels(tf.constant([1, 5])).numpy(),
        encoder(tf.constant([1, 5])).numpy(),
    )
    np.testing.assert_array_equal(encoder(tf.constant([1, 5])).numpy(), [1, 0, 0, 0, 1])
    assert LabelEncoder(NUM_CLASSES).none().shape == (0,)
    assert encoder.none().shape == (0, NUM_CLASSES)
    with pytest.raises(tf.errors.InvalidArgumentError, match="A label is negative"):
        encoder(tf.constant([0]))
