"""Property-based tests of the input pipeline: odd arrays and damaged image files.

- Any image array (shape, dtype, value range) given to `data.from_arrays` either becomes a source
  whose train and eval batches are float32 in [0, 1] with one-hot (or MixUp-mixed) labels, or is
  refused with a `ValueError` that names the problem.
- Any folder of truncated, bit-flipped, random or empty files either reads (bad files skipped and
  reported in `source.skipped`, before reading or when a pipeline fails to decode them) or stops
  with an `ImageFolderError` naming the class left empty; no image outside [0, 1] ever comes out.

The cases at the end reproduce defects these tests found (NaN in float TIFFs, empty axes,
big-endian arrays, non-positive sizes); they stay as regression tests.
"""

import io
import os
import re
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from bit_tf.data import image_folder
from bit_tf.data import pipelines as data

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = ["uint8", "uint16", "int8", "int32", "int64", "bool", "float16", "float32", "float64"]
VALID_CHANNELS = (None, 1, 3, 4)  # None: (N, H, W) grayscale without a channel axis


def _first_batches(dataset, count):
    iterator = dataset.as_numpy_iterator()
    return [batch for _, batch in zip(range(count), iterator, strict=False)]


def _make_images(rng, shape, dtype, low, high, special):
    """Images of `shape` and `dtype` with values in [low, high] and one optional special value."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        images = rng.integers(0, 2, size=shape).astype(bool)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        images = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        images = (low + (high - low) * rng.uniform(size=shape)).astype(dtype)
        if special is not None:
            images.flat[int(rng.integers(images.size))] = special
    return images


def _check_batch(images, labels, batch, size, num_classes, mixed):
    assert images.dtype == np.float32 and labels.dtype == np.float32
    assert images.shape == (batch, size, size, 3)
    assert labels.shape == (batch, num_classes)
    assert np.isfinite(images).all(), "NaN or inf in images"
    assert images.min() >= 0.0 and images.max() <= 1.0, (images.min(), images.max())
    assert np.isfinite(labels).all() and labels.min() >= 0.0
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    if not mixed:
        assert set(np.unique(labels)) <= {0.0, 1.0}


image_arrays = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 100),
        "height": st.integers(1, 100),
        "width": st.integers(1, 100),
        "channels": st.sampled_from([None, 1, 2, 3, 4, 5]),
        "dtype": st.sampled_from(DTYPES),
        "low": st.floats(-1e4, 1e4),
        "span": st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.floats(0.0, 2e4)),
        "special": st.sampled_from([None, None, np.nan, np.inf, -np.inf]),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@settings(SETTINGS, max_examples=40)
@given(case=image_arrays, crop=st.integers(1, 12))
def test_any_image_array_gives_unit_range_batches_or_a_value_error(case, crop):
    rng = np.random.default_rng(case["seed"])
    batch = min(case["batch"], max(1, 40_000 // (case["height"] * case["width"])))
    channels = case["channels"]
    shape = (batch, case["height"], case["width"]) + (() if channels is None else (channels,))
    if case["dtype"].startswith("float") and rng.uniform() < 0.5:
        low, high = 0.0, 1.0  # half the float cases are valid images
        special = case["special"] if rng.uniform() < 0.3 else None
    else:
        low, high, special = case["low"], case["low"] + case["span"], case["special"]
    images = _make_images(rng, shape, case["dtype"], low, high, special)
    labels = np.arange(batch) % 2
    num_classes = 2

    floating = np.issubdtype(images.dtype, np.floating)
    in_range = floating and np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    valid = channels in VALID_CHANNELS and (case["dtype"] in ("uint8", "uint16") or in_range)
    event("refused" if not valid else "accepted")
    if not valid:
        with pytest.raises(ValueError) as error:
            data.from_arrays(images, labels, num_classes=num_classes)
        message = str(error.value)
        if channels not in VALID_CHANNELS:
            assert str(images.shape) in message
        elif not floating:
            assert images.dtype.name in message
        else:
            assert "[0, 1]" in message
        return

    source = data.from_arrays(images, labels, num_classes=num_classes)
    assert source.num_examples == batch and source.image_size == shape[1:3]
    eval_batch = min(batch, 16)
    (outputs, one_hot), *_ = _first_batches(data.eval_pipeline(source, eval_batch, crop), 1)
    _check_batch(outputs, one_hot, eval_batch, crop, num_classes, mixed=False)
    np.testing.assert_array_equal(one_hot.argmax(axis=1), labels[:eval_batch])
    # Resizing interpolates, so the output stays within the range of the scaled input.
    scale = {"uint8": 255.0, "uint16": 65535.0}.get(case["dtype"], 1.0)
    first = images[:eval_batch].astype(np.float64) / scale
    assert outputs.min() >= first.min() - 1e-6 and outputs.max() <= first.max() + 1e-6


@settings(SETTINGS, max_examples=25)
@given(
    examples=st.integers(2, 12),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    num_classes=st.integers(2, 4),
    dtype=st.sampled_from(["uint8", "uint16", "float16", "float32", "float64"]),
    batch_size=st.integers(1, 8),
    resize=st.integers(1, 24),
    crop=st.integers(1, 30),
    mixup_alpha=st.sampled_from([0.0, 0.0, 0.01, 0.2, 1.0, 5.0]),
    repeat=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_train_batches_are_unit_range_with_labels_summing_to_one(
    examples, height, width, num_classes, dtype, batch_size, resize, crop, mixup_alpha, repeat, seed
):
    rng = np.random.default_rng(seed)
    images = _make_images(rng, (examples, height, width, 3), dtype, 0.0, 1.0, None)
    # Extreme pixels on purpose: the resize and MixUp arithmetic must not leave [0, 1].
    images[0] = np.iinfo(dtype).max if dtype.startswith("uint") else 1.0
    labels = np.arange(examples) % num_classes
    source = data.from_arrays(images, labels, num_classes=num_classes)

    def pipeline():
        return data.train_pipeline(
            source, batch_size, resize, crop, mixup_alpha=mixup_alpha, seed=seed, repeat=repeat
        )

    if crop > resize:
        with pytest.raises(ValueError, match=rf"crop \({crop}\).*resize \({resize}\)"):
            pipeline()
        return
    if batch_size > examples and not repeat:
        with pytest.raises(ValueError, match=rf"batch_size {batch_size}.* {examples} examples"):
            pipeline()
        return
    batches = _first_batches(pipeline(), 3)
    expected = 3 if repeat else min(3, examples // batch_size)
    assert len(batches) == expected
    for images_out, labels_out in batches:
        _check_batch(images_out, labels_out, batch_size, crop, num_classes, mixed=mixup_alpha > 0)


@settings(SETTINGS, max_examples=30)
@given(
    labels=st.one_of(
        st.lists(st.integers(-3, 6), min_size=0, max_size=8).map(np.asarray),
        st.lists(st.floats(-2, 6), min_size=1, max_size=8).map(np.asarray),
        st.lists(st.booleans(), min_size=1, max_size=8).map(np.asarray),
        st.lists(st.integers(0, 3), min_size=4, max_size=4).map(lambda v: np.asarray(v)[None]),
    ),
    num_classes=st.one_of(st.none(), st.integers(0, 5)),
)
def test_any_labels_give_a_source_or_a_value_error(labels, num_classes):
    images = np.zeros((max(len(labels), 1), 4, 4, 3), np.uint8)
    if labels.ndim == 1 and len(labels) != len(images):
        images = images[: len(labels)]
    integer = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    classes = num_classes
    if classes is None and integer:
        classes = int(labels.max()) + 1 if len(labels) else 0
    valid = (
        integer
        and len(labels) >= 1
        and classes >= 2
        and labels.min() >= 0
        and labels.max() < classes
    )
    if not valid:
        with pytest.raises(ValueError, match=r"[Ll]abels|class|examples|images"):
            data.from_arrays(images, labels, num_classes=num_classes)
        return
    source = data.from_arrays(images, labels, num_classes=num_classes)
    assert source.num_classes == classes
    np.testing.assert_array_equal(source.labels(), labels)


# --- Damaged image files in a real folder ---------------------------------------------------


@pytest.fixture(scope="module")
def intact_files():
    """Small real images of several kinds, encoded by PIL and by TensorFlow."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    files = {}
    for name, image, options in [
        ("rgb.jpg", Image.fromarray(rgb), {"quality": 90}),
        ("rgb.png", Image.fromarray(rgb), {}),
        ("gray16.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {}),
        ("palette.png", Image.fromarray(rgb).convert("P"), {}),
        ("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])), {}),
        ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), {}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if name.endswith(".jpg") else "PNG", **options)
        files[name] = buffer.getvalue()
    files["tf.jpg"] = tf.io.encode_jpeg(rgb).numpy()
    files["tf16.png"] = tf.io.encode_png(rgb.astype(np.uint16) * 257).numpy()
    return files


def _mutated(original, mutation, cut, flips, garbage):
    if mutation == "intact":
        return original
    if mutation == "truncated":
        return original[: cut % max(len(original), 1)]
    if mutation == "bit_flips":
        damaged = bytearray(original)
        for position, mask in flips:
            damaged[position % len(damaged)] ^= mask
        return bytes(damaged)
    if mutation == "header_then_garbage":
        return original[:32] + garbage
    if mutation == "random":
        return garbage
    return b""  # empty


files_in_folder = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(
            ["rgb.jpg", "rgb.png", "gray16.png", "palette.png", "rgba.png", "cmyk.jpg"]
            + ["tf.jpg", "tf16.png"]
        ),
        st.sampled_from(
            ["intact", "truncated", "bit_flips", "bit_flips", "header_then_garbage", "random"]
            + ["empty"]
        ),
        st.integers(0, 10_000),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=6),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=8,
)


@settings(SETTINGS, max_examples=50)
@given(
    files=files_in_folder,
    anchored=st.sampled_from([("a", "b"), ("a", "b"), ("a", "b"), ("b",), ()]),
)
def test_damaged_files_are_skipped_and_reported_never_yielded(intact_files, files, anchored):
    with tempfile.TemporaryDirectory() as root:
        # An intact image in the `anchored` classes, so that most folders are usable.
        files = files + [(label, "rgb.png", "intact", 0, [], b"") for label in anchored]
        written = {}
        for index, (label, kind, mutation, cut, flips, garbage) in enumerate(files):
            folder = os.path.join(root, label)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{index}_{mutation}_{kind}")
            with open(path, "wb") as file:
                file.write(_mutated(intact_files[kind], mutation, cut, flips, garbage))
            written[path] = mutation
        for label in ("a", "b"):
            os.makedirs(os.path.join(root, label), exist_ok=True)

        try:
            # A small pixel limit: a flipped header may declare a huge image.
            source = data.from_folder(root, max_pixels=4096)
        except image_folder.ImageFolderError as error:
            message = str(error)
            event("ImageFolderError")
            empty = [label for label in ("a", "b") if f"'{label}'" in message]
            assert empty and "no readable image" in message, message
            for label in empty:
                for path in written:
                    if os.path.basename(os.path.dirname(path)) == label:
                        assert written[path] != "intact", f"intact {path} was not read"
            return

        skipped = dict(source.skipped)
        event(f"{len(skipped)} of {len(written)} files skipped before reading")
        assert set(skipped) <= set(written) and len(skipped) == len(source.skipped)
        used = set(written) - set(skipped)
        for path, mutation in written.items():
            if mutation == "intact":
                assert path in used, skipped.get(path)
            if mutation == "empty":
                assert "0 bytes" in skipped[path]
        assert all(isinstance(reason, str) and reason for reason in skipped.values())
        assert source.num_examples == len(used)

        # Files damaged inside pass the checks made before reading; the pipeline skips each
        # when it fails to decode, and adds it to source.skipped.
        batches = _first_batches(data.eval_pipeline(source, len(used), 8), 1)
        read = sum(len(labels) for _, labels in batches)
        late = dict(source.skipped[len(skipped) :])
        assert read + len(late) == len(used) and set(late) <= used
        assert not any(written[path] == "intact" for path in late), late
        if batches:
            (images, labels), *_ = batches
            _check_batch(images, labels, read, 8, 2, mixed=False)
        for image, _ in source.dataset().as_numpy_iterator():
            assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


@settings(SETTINGS, max_examples=10)
@given(
    values=st.lists(
        st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.inf, -np.inf])),
        min_size=6,
        max_size=6,
    )
)
def test_float_tiff_values_are_clipped_to_unit_range(values):
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "float.tiff")
        Image.fromarray(np.asarray(values, np.float32).reshape(2, 3), mode="F").save(path)
        image = image_folder.read_image(path)
    assert image.shape == (2, 3, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


# --- Regression tests for defects found by the tests above ----------------------------------


def test_float_tiff_with_nan_is_skipped_or_made_finite(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / label / "ok.png")
    nan_image = np.array([[np.nan, 0.5], [255.0, 0.0]], np.float32)
    Image.fromarray(nan_image, mode="F").save(tmp_path / "a" / "nan.tiff")
    source = data.from_folder(tmp_path)
    for image, _ in source.dataset().as_numpy_iterator():
        assert np.isfinite(image).all(), "NaN pixels reached the pipeline"


@pytest.mark.parametrize(
    "shape, dtype", [((2, 0, 4, 3), "uint8"), ((2, 4, 0), "uint16"), ((0, 4, 4, 3), "float32")]
)
def test_empty_image_axes_are_refused_with_the_shape(shape, dtype):
    labels = np.arange(shape[0]) % 2
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        data.from_arrays(np.zeros(shape, dtype), labels, num_classes=2)


def test_big_endian_uint16_images_are_accepted():
    images = np.full((2, 4, 4, 3), 65535, dtype=">u2")
    source = data.from_arrays(images, np.array([0, 1]))
    image, _ = next(source.dataset().as_numpy_iterator())
    np.testing.assert_array_equal(image, 1.0)


@pytest.mark.parametrize(
    "pipeline, arguments, name",
    [
        ("train", {"batch_size": 0, "resize": 8, "crop": 8}, "batch_size"),
        ("train", {"batch_size": 2, "resize": 0, "crop": 0}, "resize"),
        ("train", {"batch_size": 2, "resize": 8, "crop": -1}, "crop"),
        ("eval", {"batch_size": 0, "crop": 8}, "batch_size"),
        ("eval", {"batch_size": 2, "crop": 0}, "crop"),
    ],
)
def test_non_positive_sizes_are_refused_with_a_value_error(pipeline, arguments, name):
    source = data.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]))
    make = data.train_pipeline if pipeline == "train" else data.eval_pipeline
    with pytest.raises(ValueError, match=name):
        next(iter(make(source, **arguments)))
