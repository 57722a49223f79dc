"""Pre-training input skips images that do not decode (real damaged files on disk): it reports
each one, keeps the stream of the good images exactly as it was, refuses data where nothing
decodes, and swallows no other error; `bit-pretrain` trains on such a folder."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bit_tf.pretrain.data import UpstreamInput, open_source, write_tfrecord

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _encode(array, image_format):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format)
    return buffer.getvalue()


def _noise(rng, image_format="JPEG"):
    return _encode(rng.integers(0, 256, (26, 22, 3), dtype=np.uint8), image_format)


def _black(image_format="JPEG"):
    return _encode(np.zeros((26, 22, 3), np.uint8), image_format)


#: The damaged files (relative path -> bytes); class "c" has nothing else.
def _bad_files(rng):
    good = _noise(rng)
    return {
        "a/empty.jpg": b"",
        "a/truncated.jpg": good[: len(good) * 2 // 3],
        "b/notes.png": b"shopping list: milk, eggs\n",
        "c/fake.jpg": b"\xff\xd8\xff" + b"\x00" * 8,  # 11 bytes, like the audit's file
    }


def _folder(root, rng, bad_files, replace_bad_with_black=False):
    """Classes a (4 good: 3 JPEG, 1 PNG), b (3 good) and c, plus `bad_files`, or black images
    of the same names in their place."""
    files = {f"a/{index}.jpg": _noise(rng) for index in range(3)}
    files["a/3.png"] = _noise(rng, "PNG")
    files.update({f"b/{index}.jpg": _noise(rng) for index in range(3)})
    for name, data in bad_files.items():
        if replace_bad_with_black:
            data = _black("PNG" if name.endswith(".png") else "JPEG")
        files[name] = data
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _stream(upstream, batches):
    dataset = upstream.dataset_fn()(tf.distribute.InputContext())
    pairs = [(images.numpy(), labels.numpy()) for images, labels in dataset.take(batches)]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def test_folder_skips_bad_files_reports_them_and_keeps_the_good_images_stream(tmp_path, capfd):
    bad_files = _bad_files(np.random.default_rng(0))
    damaged = _folder(tmp_path / "damaged", np.random.default_rng(1), bad_files)
    repaired = _folder(tmp_path / "repaired", np.random.default_rng(1), bad_files, True)
    capfd.readouterr()

    # 11 files, 7 of them good: a batch of 7 per epoch, 3 epochs (the epoch order changes).
    source = open_source(damaged)
    assert source.class_names == ["a", "b", "c"] and len(source.files) == 11
    upstream = UpstreamInput(source, 3, 7, image_size=8, seed=4)
    assert upstream.skip_bad_images
    images, labels = _stream(upstream, 3)
    for epoch in range(3):
        # Class c (only a damaged file) keeps its id 2 and simply has no examples.
        assert sorted(labels[7 * epoch : 7 * epoch + 7].tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert images.min() >= 0.0 and images.max() <= 1.0

    stderr = capfd.readouterr().err
    not_an_image = (
        "not a decodable JPEG, PNG, GIF or BMP image (corrupt, truncated or another format)."
    )
    for name, data in bad_files.items():
        reason = "the file is empty." if not data else not_an_image
        path = os.path.join(damaged, name)
        line = (
            f"WARNING bit_tf.pretrain.data: skipped {path} ({len(data)} bytes, epoch 0): {reason}"
        )
        assert line in stderr, stderr[-3000:]
    for path in source.files:
        if os.path.relpath(path, damaged) not in bad_files:
            assert f"skipped {path} " not in stderr

    # The same folder with black images in place of the damaged ones: (1) its stream is the
    # one of the pipeline that does not skip anything, and (2) without its black images it is
    # the damaged folder's stream, image for image: the good images keep their order and crops.
    upstream = UpstreamInput(open_source(repaired), 3, 11, image_size=8, seed=4)
    clean_images, clean_labels = _stream(upstream, 3)
    unskipping = UpstreamInput(
        open_source(repaired), 3, 11, image_size=8, seed=4, skip_bad_images=False
    )
    reference_images, reference_labels = _stream(unskipping, 3)
    np.testing.assert_array_equal(clean_images, reference_images)
    np.testing.assert_array_equal(clean_labels, reference_labels)
    good = clean_images.reshape(len(clean_images), -1).max(axis=1) > 0
    assert good.sum() == 21
    np.testing.assert_array_equal(images, clean_images[good])
    np.testing.assert_array_equal(labels, clean_labels[good])
    # Resuming at step 1 continues the very same stream (the pipeline is a function of the step).
    resumed = upstream.dataset_fn(start_step=1)(tf.distribute.InputContext())
    resumed_images = np.concatenate([batch.numpy() for batch, _ in resumed.take(2)])
    np.testing.assert_array_equal(resumed_images, clean_images[11:])


def test_a_folder_where_nothing_decodes_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(b"")
    (tmp_path / "cats" / "b.png").write_text("not a picture")
    upstream = UpstreamInput(open_source(str(tmp_path)), 1, 2, image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="No image of .* decoded in epoch 0"):
        _stream(upstream, 1)


def test_only_decoding_errors_are_skipped(tmp_path):
    rng = np.random.default_rng(2)
    # A file that disappears after listing: a reading error, not skipped.
    folder = _folder(tmp_path / "folder", rng, {})
    source = open_source(folder)
    os.remove(os.path.join(folder, "b", "1.jpg"))
    with pytest.raises(tf.errors.NotFoundError, match="1.jpg"):
        _stream(UpstreamInput(source, 2, 7, image_size=8), 1)

    # TFRecords: a damaged image fails as before unless skip_bad_images=True, which skips it
    # (reported as a record of the files); a label error still fails.
    records = write_tfrecord(
        str(tmp_path / "train.tfrecord"),
        [(_noise(rng), 0), (b"\xff\xd8\xff" + b"\x00" * 8, 1), (_noise(rng, "PNG"), 1)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        _stream(UpstreamInput(open_source(records), 2, 2, image_size=8, shuffle_buffer=1), 1)
    skipping = UpstreamInput(
        open_source(records), 2, 2, image_size=8, shuffle_buffer=1, skip_bad_images=True
    )
    assert _stream(skipping, 1)[1].tolist() == [0, 1]
    out_of_range = UpstreamInput(
        open_source(records), 1, 2, image_size=8, shuffle_buffer=1, skip_bad_images=True
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        _stream(out_of_range, 1)


def test_multi_label_tfrecords_skip_a_damaged_image_when_asked(tmp_path):
    rng = np.random.default_rng(5)
    examples = [(_noise(rng), [0, 2]), (b"", [1]), (_noise(rng, "PNG"), []), (_noise(rng), [1])]
    records = write_tfrecord(str(tmp_path / "multi.tfrecord"), examples)
    upstream = UpstreamInput(
        open_source(records),
        3,
        3,
        image_size=8,
        multi_label=True,
        shuffle_buffer=1,
        skip_bad_images=True,
    )
    _, labels = _stream(upstream, 2)
    expected = [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    np.testing.assert_array_equal(labels, np.array(expected * 2, np.float32))


def _bit_pretrain(folder, checkpoint_dir, *flags):
    """Runs the bit-pretrain command for 3 steps of a tiny model on `folder`."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    environment["PYTHONPATH"] = REPOSITORY + os.pathsep + environment.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "bit_cli.pretrain",
        "--model=BiT-S-R18x1",
        "--units_per_block=1,1,1,1",
        f"--dataset={folder}",
        "--global_batch_size=4",
        "--train_steps=3",
        "--warmup_steps=1",
        "--image_size=16",
        "--log_every=1",
        f"--checkpoint_dir={checkpoint_dir}",
        "--hub_export_dir=",
        *flags,
    ]
    return subprocess.run(
        command, env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=240
    )


def test_bit_pretrain_trains_on_a_folder_with_damaged_files(tmp_path):
    folder = _folder(
        tmp_path / "data", np.random.default_rng(3), _bad_files(np.random.default_rng(4))
    )
    result = _bit_pretrain(folder, tmp_path / "ckpt", "--cpu_devices=2", "--strategy=mirrored")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done at step 3" in result.stdout
    assert f"skipped {os.path.join(folder, 'c', 'fake.jpg')} (11 bytes, epoch 0)" in result.stderr
    assert "Traceback" not in result.stderr


def test_bit_pretrain_on_a_folder_where_nothing_decodes_stops_with_one_line(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "a.jpg").write_bytes(b"")
    result = _bit_pretrain(tmp_path / "data", tmp_path / "ckpt")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "bit-pretrain: error: No image of" in result.stderr
    assert "decoded in epoch 0" in result.stderr
    assert "Traceback" not in result.stderr
