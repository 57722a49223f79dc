"""From a folder of photos to an answer: the folder names travel through bit-finetune and
bit-export into the serving SavedModel, and bit-predict classifies image files by name."""

import io
import json
import os
import pty
import queue
import subprocess
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import bit_tf
from bit_cli import predictors
from bit_cli.answers import format_table
from bit_tf.models import class_names

from exif_photos import stored_file

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPOSITORY}
FOLDERS = ("daisy", "rose", "tulip")  # the class names, in the order of their class ids
# One format per class folder, and the colour of its images.
PHOTOS = {"daisy": ("PNG", (230, 230, 60)), "rose": ("JPEG", (200, 30, 40)), "tulip": ("GIF", None)}
IMAGE_SIZE = 16

# Serving without our code: bit_tf, hub_export and bit_cli cannot be imported.
SERVING_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    for package in ("bit_tf", "hub_export", "bit_cli"):
        sys.modules[package] = None  # blocks `import bit_tf`, even of an installed bit_tf
    import tensorflow as tf

    try:
        import bit_tf  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    files = [open(path, "rb").read() for path in sys.argv[2:]]
    outputs = serve(image_bytes=tf.constant(files))
    print("RESULTS " + json.dumps({
        "bit_tf_importable": importable,
        "valid": outputs["valid"].numpy().tolist(),
        "ids": outputs["top_k_class_ids"].numpy().tolist(),
        "names": [[name.decode() for name in row] for row in outputs["top_k_class_names"].numpy()],
        "probabilities": outputs["top_k_probabilities"].numpy().tolist(),
    }))
    """
)


def run(*command: str, cwd, isolated: bool = False) -> subprocess.CompletedProcess:
    """Runs `python <command>` in `cwd`: with the repository on the path, or isolated (-I)."""
    environment = dict(ENVIRONMENT)
    if isolated:
        del environment["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, *(["-I"] if isolated else []), *command],
        cwd=str(cwd),
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_photo(path, image_format: str, colour, seed: int) -> None:
    """A small photo of one colour with noise; `colour=None`: a grey-blue two-frame GIF."""
    rng = np.random.default_rng(seed)
    base = np.array(colour or (60, 80, 200), np.float32)
    pixels = np.clip(base + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if image_format == "GIF":
        second = Image.fromarray(255 - pixels)
        image.save(path, "GIF", save_all=True, append_images=[second])
    else:
        image.save(path, image_format)


def by_class_id(top_classes) -> dict:
    """{class id: (name, probability)} of a JSON answer's top classes."""
    return {top["class_id"]: (top["class_name"], top["probability"]) for top in top_classes}


@pytest.mark.slow
def test_folder_names_travel_to_the_serving_model_and_bit_predict(tmp_path, official_checkpoint):
    photos = tmp_path / "photos"
    files = []
    for name, (image_format, colour) in PHOTOS.items():
        (photos / name).mkdir(parents=True)
        for index in range(4):
            path = photos / name / f"{index}.{image_format.lower()}"
            write_photo(path, image_format, colour, seed=len(files))
            files.append(str(path))
    (tmp_path / "notes.txt").write_text("not an image")

    # Random-feature R14x1 from the fixture, two steps at a rate that separates the classes.
    finetuned = run(
        "-m",
        "bit_cli.finetune",
        f"--dataset={photos}",
        f"--weights={official_checkpoint}",
        "--steps=2",
        "--batch_size=4",
        "--base_lr=20",
        f"--resize={IMAGE_SIZE}",
        f"--crop={IMAGE_SIZE}",
        "--export_dir=run",
        cwd=tmp_path,
    )
    assert finetuned.returncode == 0, finetuned.stderr[-3000:]
    exported = run(
        "-m",
        "bit_cli.export",
        "--weights=run/model.keras",
        "--kind=classification",
        "--export_dir=module",
        "--serving_dir=serving",
        "--serving_batch_size=5",  # the request of 12 files below: batches of 5, 5 and 2
        f"--image_size={IMAGE_SIZE}",
        "--publish_to=hub",
        "--publish_name=photos/r14x1",
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "class names: the model's 3 (--class_names to change)" in exported.stdout
    card = (tmp_path / "hub" / "photos" / "r14x1" / "1.md").read_text()
    assert "## Classes" in card and "0. daisy\n1. rose\n2. tulip" in card

    (tmp_path / "serve.py").write_text(SERVING_SCRIPT)
    served = run("serve.py", str(tmp_path / "serving" / "1"), *files, cwd=tmp_path, isolated=True)
    assert served.returncode == 0, served.stderr[-3000:]
    line = next(line for line in served.stdout.splitlines() if line.startswith("RESULTS "))
    serving = json.loads(line[len("RESULTS ") :])
    assert serving["bit_tf_importable"] is False
    assert serving["valid"] == [True] * len(files)  # PNG, JPEG and animated GIF
    for ids, names in zip(serving["ids"], serving["names"], strict=True):
        assert names == [FOLDERS[class_id] for class_id in ids]

    predicted = run(
        "-m",
        "bit_cli.predict",
        "--model=run/model.keras",
        "--format=json",
        f"--image_size={IMAGE_SIZE}",
        *files,
        "notes.txt",
        cwd=tmp_path,
    )
    assert predicted.returncode == 1, predicted.stderr[-3000:]  # one file was not an image
    assert "files (" not in predicted.stderr  # no progress line where stderr is no terminal
    answers = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [answer["file"] for answer in answers] == [*files, "notes.txt"]
    assert answers[-1]["error"] == "not a JPEG, PNG, GIF, BMP or WebP image"
    for answer, ids, probabilities in zip(
        answers, serving["ids"], serving["probabilities"], strict=False
    ):
        ours = by_class_id(answer["top_k"])
        assert {class_id: name for class_id, (name, _) in ours.items()} == dict(enumerate(FOLDERS))
        served_probabilities = dict(zip(ids, probabilities, strict=True))
        for class_id, (_, probability) in ours.items():
            assert probability == pytest.approx(served_probabilities[class_id], abs=1e-4)

    # The serving folder through bit-predict's own classifier: the same names and answers.
    served_classifier = predictors.load_classifier(str(tmp_path / "serving"))
    assert served_classifier.class_names == FOLDERS
    again = served_classifier.classify([*files, str(tmp_path / "notes.txt")], top_k=3)
    for answer, json_answer in zip(again, answers, strict=True):
        assert (answer.error is None) == ("error" not in json_answer)
        for top in answer.top_classes:
            name, probability = by_class_id(json_answer["top_k"])[top.class_id]
            assert top.name == name and top.probability == pytest.approx(probability, abs=1e-4)
    table = format_table(again)
    assert table.splitlines()[0].split() == ["file", "rank", "class", "probability", "name"]
    notes_row = next(row for row in table.splitlines() if row.startswith(again[-1].path))
    assert notes_row.split()[1:] == ["error:", *again[-1].error.split()]
    first_rows = [row.split() for row in table.splitlines() if row.startswith(files[0])]
    assert first_rows[0][1] == "1" and first_rows[0][-1] in FOLDERS


def encode(pixels: np.ndarray, image_format: str, mode: str | None = None) -> bytes:
    stream = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(stream, image_format)
    return stream.getvalue()


def test_keras_classifier_reads_every_format_and_reports_bad_files(
    tmp_path, official_checkpoint, capsys
):
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    bit_tf.load_official_weights(model, official_checkpoint)
    model.class_names = [f"class {index}" for index in range(10)]
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (30, 40, 3), np.uint8)
    payloads = {
        "photo.jpg": encode(pixels, "JPEG"),
        "rgba.png": encode(pixels, "PNG", "RGBA"),
        "gray.png": encode(pixels, "PNG", "L"),
        "palette.gif": encode(pixels, "GIF"),
        "rgb.bmp": encode(pixels, "BMP"),
        "rgba.bmp": encode(pixels, "BMP", "RGBA"),
        "gray.bmp": encode(pixels, "BMP", "L"),
        "notes.txt": b"not an image",
        "broken.jpg": encode(pixels, "JPEG")[:20],
    }
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in [*payloads, "missing.png"]]

    classifier = predictors.KerasClassifier(model, image_size=24, batch_size=4)
    answers = classifier.classify(paths, top_k=3)
    errors = {os.path.basename(answer.path): answer.error for answer in answers}
    assert errors.pop("notes.txt") == "not a JPEG, PNG, GIF, BMP or WebP image"
    assert errors.pop("broken.jpg").startswith("cannot decode the image:")
    assert errors.pop("missing.png").startswith("cannot read the file:")
    assert set(errors.values()) == {None}

    for answer in answers[:7]:
        data = payloads[os.path.basename(answer.path)]
        if answer.path.endswith(".jpg"):
            rgb = tf.io.decode_jpeg(data, channels=3)
        else:  # lossless: what PIL reads, to RGB (a GIF's palette applied, alpha dropped)
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        image = tf.image.resize(rgb, [24, 24]) / 255.0
        expected = tf.nn.softmax(model(image[None])).numpy()[0]
        assert [top.class_id for top in answer.top_classes] == list(np.argsort(-expected)[:3])
        for top in answer.top_classes:
            assert top.name == f"class {top.class_id}"
            assert top.probability == pytest.approx(expected[top.class_id], abs=1e-5)
    # bit-predict prints them batch by batch: the table of all of them, row for row.
    from bit_cli.answer_printing import print_answers

    assert print_answers(classifier, paths, 3, json_lines=False) is False  # some errors
    assert capsys.readouterr().out == format_table(answers) + "\n"
    # Without --image_size: the HyperRule's evaluation crop for each file's size.
    default = predictors.KerasClassifier(model)
    assert (default.image_size_for(30, 40), default.image_size_for(480, 640)) == (128, 384)


def test_released_heads_are_named_imagenet_classes(tmp_path):
    assert len(class_names.imagenet2012_class_names()) == 1000
    assert class_names.released_head_class_names(1000)[:2] == ("tench", "goldfish")
    wordnet_ids = class_names.released_head_class_names(21843)
    assert len(wordnet_ids) == 21843 and wordnet_ids[0] == "n00004475"
    assert class_names.released_head_class_names(10) is None

    # An official-layout checkpoint with an ImageNet-1k head, as BiT-S and -ILSVRC2012 have.
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=1000)
    checkpoint = bit_tf.save_official_weights(model, str(tmp_path / "imagenet_head.npz"))
    classifier = predictors.load_classifier(checkpoint, image_size=16)
    assert classifier.class_names[:2] == ("tench", "goldfish")
    (tmp_path / "photo.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    answer = classifier.classify([str(tmp_path / "photo.png")], top_k=2)[0]
    assert [top.name for top in answer.top_classes] == [
        class_names.imagenet2012_class_names()[top.class_id] for top in answer.top_classes
    ]


def test_settings_that_cannot_work_are_one_line_errors(tmp_path):
    completed = run("-m", "bit_cli.predict", "--model=missing.keras", "photo.jpg", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        "bit-predict: error: Model file 'missing.keras' does not exist."
    )


def test_a_model_that_is_not_a_bit_classifier_is_refused_by_what_it_is():
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="is not a BiT ResNetV2 built by bit_tf"):
        predictors.KerasClassifier(other)
    features = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)
    with pytest.raises(ValueError, match="has no head: it ends at the pre-logits"):
        predictors.KerasClassifier(features)


def _lines_of(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line.decode())
    lines.put(None)


def _everything_written(leader: int, chunks: list) -> None:
    """What the command drew on its terminal, until it closed it (EIO)."""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:
            return
        if not chunk:
            return
        chunks.append(chunk)


def _open_for_writing(fifo: str, seconds: float) -> int:
    """The FIFO opened for writing once its reader has opened it (ENXIO until then)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_bit_predict_answers_batch_by_batch_with_a_progress_line_on_a_terminal(
    tmp_path, official_checkpoint
):
    """The first batches are printed while the last file has not been read (a FIFO that
    gets its bytes only then); the progress line goes to stderr on a terminal; the same photo
    in its 8 EXIF orientations gets one answer."""
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    bit_tf.load_official_weights(model, official_checkpoint)
    model.save(tmp_path / "model.keras")
    files = []
    for value in range(1, 9):
        files.append(f"photo_{value}.jpg")
        (tmp_path / files[-1]).write_bytes(stored_file(value, big_endian=value % 2 == 0))
    os.mkfifo(tmp_path / "last.jpg")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bit_cli.predict", "--model=model.keras", "--format=json"]
        + ["--image_size=32", "--batch_size=4", *files, "last.jpg"],
        cwd=str(tmp_path),
        env=ENVIRONMENT,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    lines, drawn = queue.Queue(), []
    readers = [
        threading.Thread(target=_lines_of, args=(process.stdout, lines), daemon=True),
        threading.Thread(target=_everything_written, args=(leader, drawn), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        first = [lines.get(timeout=120) for _ in range(8)]  # the first two batches of 4
        assert None not in first, b"".join(drawn).decode(errors="replace")[-3000:]
        assert process.poll() is None  # ...while bit-predict waits to read the last file
        descriptor = _open_for_writing(str(tmp_path / "last.jpg"), 60)
        os.write(descriptor, stored_file(1))
        os.close(descriptor)
        rest = [line for line in iter(lambda: lines.get(timeout=60), None)]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for reader in readers:
        reader.join(timeout=10)
    os.close(leader)
    answers = [json.loads(line) for line in first + rest]
    assert [answer["file"] for answer in answers] == [*files, "last.jpg"]
    expected = by_class_id(answers[0]["top_k"])
    for answer in answers:
        for class_id, (_, probability) in by_class_id(answer["top_k"]).items():
            assert probability == pytest.approx(expected[class_id][1], rel=1e-4, abs=1e-6)
    terminal = b"".join(drawn).decode(errors="replace")
    assert "bit-predict: 4 of 9 files (44%)" in terminal
    assert "bit-predict: 9 of 9 files (100%)" in terminal and "files/s" in terminal
    assert all("files (" not in line for line in first + rest)  # stdout holds answers only
