"""hub_export.export_serving: encoded images in, probabilities out, without our Python code."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import bit_tf
import hub_export
from bit_tf.data import image_folder

from exif_photos import TO_STORED, stored_file, upright_photo
from exif_photos import encode as encode_with_exif

IMAGE_SIZE = 32
CLASS_NAMES = [f"class_{index}" for index in range(10)]
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}


def encode(array, image_format, mode=None, **options):
    stream = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(stream, image_format, **options)
    return stream.getvalue()


@pytest.fixture(scope="module")
def classifier(official_checkpoint):
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


@pytest.fixture(scope="module")
def exports(classifier, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    folded = hub_export.export_serving(
        classifier, str(base / "folded"), class_names=CLASS_NAMES, image_size=IMAGE_SIZE
    )
    batches_of_3 = hub_export.export_serving(
        classifier, str(base / "batches_of_3"), image_size=IMAGE_SIZE, batch_size=3
    )
    return {"folded": folded, "batches_of_3": batches_of_3}


@pytest.fixture(scope="module")
def files():
    rng = np.random.default_rng(4)
    return {
        "jpeg": encode(rng.integers(0, 256, (40, 30, 3), np.uint8), "JPEG"),
        "png_rgba": encode(rng.integers(0, 256, (24, 52, 3), np.uint8), "PNG", "RGBA"),
        "png_gray": encode(rng.integers(0, 256, (33, 33), np.uint8), "PNG"),
    }


def expected_probabilities(classifier, data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE]) / 255.0
    return tf.nn.softmax(classifier(image[None])).numpy()[0]


def huge_png(width, height):
    """A PNG signature and IHDR chunk declaring a huge image (the body never comes)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc + b"\0" * 20


def huge_jpeg(jpeg):
    """A real JPEG whose frame header (SOF0) is patched to declare 60000 x 60000 pixels."""
    start = jpeg.index(b"\xff\xc0")
    return jpeg[: start + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[start + 9 :]


def test_bytes_signature_answers_mixed_jpeg_and_png(exports, classifier, files):
    serve = tf.saved_model.load(exports["folded"]).signatures["serving_default"]
    batch = [files["jpeg"], files["png_rgba"], files["png_gray"]]
    outputs = serve(image_bytes=tf.constant(batch))
    probabilities = outputs["probabilities"].numpy()
    for row, data in zip(probabilities, batch, strict=True):
        expected = expected_probabilities(classifier, data)
        assert np.max(np.abs(row - expected)) / np.max(expected) < 1e-5
    assert outputs["valid"].numpy().tolist() == [True, True, True]
    top_ids = outputs["top_k_class_ids"].numpy()
    assert top_ids.shape == (3, 5)
    assert (top_ids[:, 0] == probabilities.argmax(axis=1)).all()
    names = outputs["top_k_class_names"].numpy()
    assert [name.decode() for name in names[0]] == [CLASS_NAMES[i] for i in top_ids[0]]


def test_a_request_is_answered_in_batches_with_the_answers_of_the_whole(exports, classifier, files):
    rng = np.random.default_rng(11)
    photos = [encode(rng.integers(0, 256, (20 + 3 * i, 28, 3), np.uint8), "PNG") for i in range(3)]
    request = [files["jpeg"], b"junk", files["png_rgba"], files["jpeg"][:50], *photos]
    request += [files["png_gray"]]
    whole = tf.saved_model.load(exports["folded"])  # batches of 16: the request at once
    in_threes = tf.saved_model.load(exports["batches_of_3"])
    one_by_one = hub_export.ServingModule(
        classifier, image_size=IMAGE_SIZE, class_names=CLASS_NAMES, batch_size=1
    )
    expected = {
        k: v.numpy()
        for k, v in whole.signatures["serving_default"](image_bytes=tf.constant(request)).items()
    }
    assert expected["valid"].tolist() == [True, False, True, False, True, True, True, True]
    for answers in (
        in_threes.signatures["serving_default"](image_bytes=tf.constant(request)),
        one_by_one.serve_bytes(tf.constant(request)),
    ):
        for key, value in answers.items():
            if value.dtype.is_floating:
                np.testing.assert_allclose(value.numpy(), expected[key], rtol=1e-5, atol=1e-7)
            else:
                np.testing.assert_array_equal(value.numpy(), expected[key], err_msg=key)
    pixels = tf.constant(rng.integers(0, 256, (7, 24, 20, 3), np.uint8))
    np.testing.assert_allclose(
        in_threes.signatures["predict_uint8_images"](images=pixels)["probabilities"].numpy(),
        whole.signatures["predict_uint8_images"](images=pixels)["probabilities"].numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    empty = in_threes.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 10) and empty["top_k_class_ids"].shape == (0, 5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        hub_export.ServingModule(classifier, image_size=IMAGE_SIZE, batch_size=0)


def test_a_photo_is_read_upright_in_every_orientation_by_every_reader(
    exports, classifier, tmp_path
):
    """The same photo stored in each of the 8 EXIF orientations (TIFF byte orders alternating):
    the training folder reader, the serving SavedModel and both classifiers of bit-predict (the
    Keras one decodes with hub_export.decode_images) read it upright and give one answer."""
    from bit_cli import predictors

    paths = []
    for value in range(1, 9):
        big_endian = value % 2 == 1
        paths.append(str(tmp_path / f"orientation_{value}_{'mm' if big_endian else 'ii'}.jpg"))
        with open(paths[-1], "wb") as stream:
            stream.write(stored_file(value, big_endian=big_endian))
    upright = upright_photo()
    for path in paths:  # the training folder reader
        read = image_folder.read_image(path)
        assert np.abs(read * 255 - upright).max() <= 1.01, path

    served = tf.saved_model.load(exports["folded"]).signatures["serving_default"]
    request = [open(path, "rb").read() for path in paths]
    sideways = np.asarray(Image.fromarray(upright).transpose(TO_STORED[6]))
    request.append(encode_with_exif(sideways, "JPEG", quality=100, subsampling=0))  # no tag
    probabilities = served(image_bytes=tf.constant(request))["probabilities"].numpy()
    answer, sideways_answer = probabilities[0], probabilities[-1]
    for path, row in zip(paths, probabilities[:-1], strict=True):
        np.testing.assert_allclose(row, answer, rtol=1e-5, atol=1e-7, err_msg=path)
    assert np.abs(sideways_answer - answer).max() > 100 * 1e-5 * answer.max()  # turns matter

    for reader in (
        predictors.KerasClassifier(classifier, image_size=IMAGE_SIZE, batch_size=8),
        predictors.ServingClassifier(os.path.dirname(exports["folded"]), batch_size=8),
    ):
        for found in reader.classify(paths, top_k=10):
            by_id = {top.class_id: top.probability for top in found.top_classes}
            np.testing.assert_allclose(
                [by_id[class_id] for class_id in range(10)], answer, rtol=1e-4, atol=1e-6
            )


def test_folding_keeps_outputs_and_float_signature_matches(exports, classifier, files):
    images = np.random.default_rng(5).uniform(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3))
    images = tf.constant(images, tf.float32)
    folded = tf.saved_model.load(exports["folded"])
    assert not any("standardized" in key for key in folded.forward.weights.keys())
    plain = hub_export.ServingModule(
        classifier, image_size=IMAGE_SIZE, fold_weight_standardization=False
    )
    assert any("standardized" in variable.name for variable in plain.forward.weights.values())
    folded_outputs = folded.signatures["predict_images"](images=images)
    folded_probabilities = folded_outputs["probabilities"].numpy()
    plain_probabilities = plain.predict_images(images)["probabilities"].numpy()
    keras_probabilities = tf.nn.softmax(classifier(images)).numpy()
    for other in (plain_probabilities, keras_probabilities):
        assert np.max(np.abs(folded_probabilities - other)) < 1e-5 * np.max(other)
    assert "top_k_class_names" not in plain.serve_bytes(tf.constant([files["jpeg"]]))
    # uint8 pixels have a signature of their own, which divides them by 255 in the graph.
    pixels = np.random.default_rng(6).integers(0, 256, (2, 20, 28, 3), np.uint8)
    from_pixels = folded.signatures["predict_uint8_images"](images=tf.constant(pixels))
    from_floats = folded.signatures["predict_images"](images=tf.constant(pixels / 255, tf.float32))
    np.testing.assert_allclose(
        from_pixels["probabilities"].numpy(), from_floats["probabilities"].numpy(), atol=1e-6
    )
    assert from_pixels["reason"].numpy().tolist() == [b"", b""]


def photo(height=60, width=80, seed=7):
    """A smooth, photo-like image (gradients and noise), as uint8 RGB."""
    rows, columns = np.mgrid[0:height, 0:width]
    gradients = np.stack([columns * 3, rows * 4, rows + columns], axis=-1)
    noise = np.random.default_rng(seed).integers(-20, 20, (height, width, 3))
    return np.clip(gradients + noise, 0, 255).astype(np.uint8)


def animated_webp(pixels):
    """Three frames; TensorFlow's WebP decoder can corrupt memory on such files."""
    frames = [Image.fromarray(np.roll(pixels, shift, axis=1)) for shift in (0, 10, 20)]
    stream = io.BytesIO()
    frames[0].save(stream, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return stream.getvalue()


def test_damaged_files_fail_only_themselves(exports, classifier, tmp_path):
    pixels = photo()
    good = {
        "photo.jpg": encode(pixels, "JPEG"),
        "photo.png": encode(pixels, "PNG"),
        "photo.gif": encode(pixels, "GIF"),
        "photo.bmp": encode(pixels, "BMP"),
        "photo.webp": encode(pixels, "WEBP"),
        "lossless.webp": encode(pixels, "WEBP", lossless=True),
    }
    jpeg, png = good["photo.jpg"], good["photo.png"]
    progressive = encode(pixels, "JPEG", progressive=True)
    huffman = jpeg.index(b"\xff\xc4") + 5  # the code counts of the first Huffman table
    truncated_jpeg = "truncated JPEG: no end-of-image marker"
    shorter = "shorter than its header declares"
    bad = {
        "half.jpg": (jpeg[: len(jpeg) // 2], truncated_jpeg),
        "header_only.jpg": (jpeg[: jpeg.index(b"\xff\xda")], truncated_jpeg),  # up to the scan
        "first_20_bytes.jpg": (jpeg[:20], truncated_jpeg),
        "last_bytes_missing.jpg": (jpeg[:-2], truncated_jpeg),
        "progressive_cut.jpg": (progressive[:-1], truncated_jpeg),
        "bad_huffman.jpg": (
            jpeg[:huffman] + b"\xff" * 16 + jpeg[huffman + 16 :],
            "damaged JPEG data: the decoder failed",
        ),
        "half.png": (png[: len(png) // 2], "truncated PNG: no IEND chunk"),
        "last_bytes_missing.png": (png[:-1], "truncated PNG: no IEND chunk"),
        "half.gif": (good["photo.gif"][: len(good["photo.gif"]) // 2], "truncated GIF: no trailer"),
        "half.bmp": (good["photo.bmp"][:-100], f"truncated BMP: {shorter}"),
        "half.webp": (good["photo.webp"][:-10], f"truncated WebP: {shorter}"),
        "animated.webp": (animated_webp(pixels), "animated WebP is not read"),
        "random.bin": (
            np.random.default_rng(8).bytes(2000),
            "not a JPEG, PNG, GIF, BMP or WebP file",
        ),
    }
    names = [name for pair in zip(good, list(bad)[: len(good)], strict=True) for name in pair]
    names += list(bad)[len(good) :]
    for name in names:  # real files, read back as a client would
        (tmp_path / name).write_bytes(good[name] if name in good else bad[name][0])
    request = [(tmp_path / name).read_bytes() for name in names]

    serve = tf.saved_model.load(exports["folded"]).signatures["serving_default"]
    outputs = {key: value.numpy() for key, value in serve(image_bytes=tf.constant(request)).items()}
    for index, name in enumerate(names):
        if name in good:
            assert outputs["valid"][index] and outputs["reason"][index] == b"", name
            alone = serve(image_bytes=tf.constant([good[name]]))
            np.testing.assert_allclose(
                outputs["probabilities"][index], alone["probabilities"].numpy()[0], rtol=1e-5
            )
            assert (outputs["top_k_class_ids"][index] == alone["top_k_class_ids"].numpy()).all()
        else:
            assert not outputs["valid"][index], name
            assert outputs["reason"][index].decode() == bad[name][1], name
            assert (outputs["probabilities"][index] == 0).all()
            assert (outputs["top_k_class_ids"][index] == -1).all()
    expected = expected_probabilities(classifier, png)  # the pixels themselves: lossless
    for name in ("photo.png", "lossless.webp"):
        row = outputs["probabilities"][names.index(name)]
        assert np.max(np.abs(row - expected)) / np.max(expected) < 1e-5, name


def test_bit_predict_reports_a_damaged_file_on_its_own_line(exports, classifier, tmp_path):
    from bit_cli import predictors
    from bit_cli.answers import format_table

    jpeg = encode(photo(), "JPEG")
    payloads = {
        "good.jpg": jpeg,
        "half.jpg": jpeg[: len(jpeg) // 2],
        "cut.png": encode(photo(), "PNG")[:-30],
        "good.png": encode(photo(seed=9), "PNG"),
    }
    paths = []
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    served = predictors.ServingClassifier(os.path.dirname(exports["folded"]))
    in_keras = predictors.KerasClassifier(classifier, image_size=IMAGE_SIZE)
    expected_errors = [
        None,
        "cannot decode the image: truncated JPEG: no end-of-image marker",
        "cannot decode the image: truncated PNG: no IEND chunk",
        None,
    ]
    answers = served.classify(paths, top_k=2)
    assert [answer.error for answer in answers] == expected_errors
    # The Keras classifier decodes with the same function (its good files: test_cli_predict).
    assert [answer.error for answer in in_keras.classify(paths[1:3], top_k=2)] == [
        expected_errors[1],
        expected_errors[2],
    ]
    rows = format_table(answers).splitlines()
    for path, error in zip(paths, expected_errors, strict=True):
        if error is not None:
            (row,) = [row for row in rows if path in row]  # one line, naming the file
            assert row.split() == [path, "error:", *error.split()]
    alone = served.classify(paths[:1], top_k=2)[0]  # the same in a request of its own
    assert [top.class_id for top in answers[0].top_classes] == [
        top.class_id for top in alone.top_classes
    ]
    for top, top_alone in zip(answers[0].top_classes, alone.top_classes, strict=True):
        assert top.probability == pytest.approx(top_alone.probability, rel=1e-5)


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["bit_tf"] = None  # our package must not be needed (nor importable)
    sys.modules["hub_export"] = None
    import json
    import tensorflow as tf

    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    files = {name: open(path, "rb").read() for name, path in json.load(open(sys.argv[2])).items()}
    results = {}

    def ask(label, items):
        try:
            outputs = serve(image_bytes=tf.constant(items, tf.string))
        except tf.errors.InvalidArgumentError as error:
            results[label] = {"error": str(error)}
            return
        results[label] = {
            "valid": outputs["valid"].numpy().tolist(),
            "ids": outputs["top_k_class_ids"].numpy().tolist(),
            "names": [[n.decode() for n in row] for row in outputs["top_k_class_names"].numpy()],
            "sums": outputs["probabilities"].numpy().sum(axis=1).tolist(),
            "reasons": [reason.decode() for reason in outputs["reason"].numpy()],
        }

    jpeg, png = files["jpeg"], files["png_rgba"]
    ask("first", [jpeg, png])
    ask("garbage", [b"this is not an image"])
    ask("empty", [b""])
    ask("mixed", [jpeg, b"garbage", png, b"", files["huge_png"]])
    ask("huge_png", [files["huge_png"]])
    ask("huge_jpeg", [files["huge_jpeg"], jpeg])
    ask("broken_jpeg", [jpeg[:20]])
    ask("truncated_png", [png[: len(png) // 2]])
    ask("after", [jpeg, png])

    def lines_written(label, items):
        sys.stderr.write(f"<<{label}>>\\n")
        sys.stderr.flush()
        ask(label, items)
        sys.stderr.write(f"<</{label}>>\\n")
        sys.stderr.flush()

    lines_written("cut", [files[name] for name in files if name.startswith("cut_")] + [jpeg])
    lines_written("bad_huffman", [files["bad_huffman"], jpeg])
    try:
        import bit_tf  # noqa: F401
        results["bit_tf_importable"] = True
    except ImportError:
        results["bit_tf_importable"] = False
    print("RESULTS " + json.dumps(results))
    """
)


def test_serving_without_bit_tf_survives_bad_bytes(exports, files, tmp_path):
    """... and writes no log line for damaged files but the JPEG decoder's own, one for each
    JPEG whose compressed data is damaged (a server at TensorFlow's default log level)."""
    paths = {}
    payloads = {**files, "huge_png": huge_png(100_000, 100_000)}
    payloads["huge_jpeg"] = huge_jpeg(files["jpeg"])
    pixels = photo()
    jpeg, progressive = encode(pixels, "JPEG"), encode(pixels, "JPEG", progressive=True)
    png, gif = encode(pixels, "PNG"), encode(pixels, "GIF")
    bmp, webp = encode(pixels, "BMP"), encode(pixels, "WEBP")
    payloads.update(
        cut_jpeg_half=jpeg[: len(jpeg) // 2],
        cut_jpeg_header=jpeg[: jpeg.index(b"\xff\xda")],
        cut_jpeg_20=jpeg[:20],
        cut_jpeg_end=jpeg[:-2],
        cut_progressive=progressive[:-1],
        cut_png=png[: len(png) // 2],
        cut_gif=gif[: len(gif) // 2],
        cut_bmp=bmp[:-100],
        cut_webp=webp[:-10],
        cut_empty=b"",
        cut_garbage=b"garbage",
    )
    huffman = jpeg.index(b"\xff\xc4") + 5  # the code counts of the first Huffman table
    payloads["bad_huffman"] = jpeg[:huffman] + b"\xff" * 16 + jpeg[huffman + 16 :]
    for name, data in payloads.items():
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as stream:
            stream.write(data)
    with open(tmp_path / "files.json", "w") as stream:
        json.dump(paths, stream)
    (tmp_path / "server.py").write_text(SERVER_SCRIPT)
    completed = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "server.py"),
            exports["folded"],
            str(tmp_path / "files.json"),
        ],
        capture_output=True,
        text=True,
        env={**ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "0"},  # a server's default: every line
        cwd=str(tmp_path),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    written = completed.stderr.split("<<cut>>\n")[1].split("<</cut>>")[0]
    assert written == "", written  # eleven damaged files: not a line
    assert results["cut"]["valid"] == [False] * 11 + [True]
    written = completed.stderr.split("<<bad_huffman>>\n")[1].split("<</bad_huffman>>")[0]
    assert len(written.splitlines()) <= 1, written  # libjpeg's own message, if any
    assert results["bad_huffman"]["valid"] == [False, True]
    assert results["bit_tf_importable"] is False
    assert results["first"]["valid"] == [True, True]
    assert results["first"]["ids"] == results["after"]["ids"]  # still serving, same answers
    assert np.allclose(results["first"]["sums"], 1.0, atol=1e-5)
    for label in ("garbage", "empty", "huge_png"):
        assert results[label]["valid"] == [False]
        assert results[label]["ids"] == [[-1] * 5] and results[label]["names"] == [[""] * 5]
        assert results[label]["sums"] == [0.0]
    mixed = results["mixed"]
    assert mixed["valid"] == [True, False, True, False, False]
    assert mixed["ids"][0] == results["first"]["ids"][0]
    assert mixed["ids"][2] == results["first"]["ids"][1]
    assert results["huge_jpeg"]["valid"] == [False, True]
    # A JPEG cut inside its header and a PNG cut in its body: flagged, not a failed request.
    assert results["broken_jpeg"]["valid"] == [False] and results["truncated_png"]["valid"] == [
        False
    ]
    assert results["broken_jpeg"]["reasons"] == ["truncated JPEG: no end-of-image marker"]
    assert results["truncated_png"]["reasons"] == ["truncated PNG: no IEND chunk"]


def test_saved_model_cli_runs_the_bytes_signature(exports, files, tmp_path):
    batch = np.array([files["jpeg"], files["png_gray"]], dtype=bytes)
    np.save(tmp_path / "image_bytes.npy", batch)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    completed = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            exports["folded"],
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image_bytes={tmp_path / 'image_bytes.npy'}",
            "--outdir",
            str(tmp_path / "outputs"),
        ],
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    probabilities = np.load(tmp_path / "outputs" / "probabilities.npy")
    valid = np.load(tmp_path / "outputs" / "valid.npy")
    in_process = tf.saved_model.load(exports["folded"]).signatures["serving_default"](
        image_bytes=tf.constant(list(batch))
    )
    assert valid.tolist() == [True, True]
    assert np.allclose(probabilities, in_process["probabilities"].numpy(), atol=1e-6)


def test_serving_export_refuses_bad_arguments(exports, classifier, tmp_path):
    base = os.path.dirname(exports["folded"])
    with pytest.raises(hub_export.TargetExistsError, match="already exists"):
        hub_export.export_serving(classifier, base, version=1, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="3 class names given for a model with 10 classes"):
        hub_export.export_serving(
            classifier, str(tmp_path), class_names=["a", "b", "c"], image_size=32
        )
    with pytest.raises(ValueError, match="pass image_size="):
        hub_export.export_serving(classifier, str(tmp_path))
    with pytest.raises(ValueError, match="positive integer"):
        hub_export.export_serving(classifier, str(tmp_path), version=0, image_size=32)
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    with pytest.raises(ValueError, match="no head"):
        hub_export.export_serving(backbone, str(tmp_path), image_size=32)
    assert os.listdir(tmp_path) == []
