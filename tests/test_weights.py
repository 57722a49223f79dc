"""Official checkpoints: loading, saving, clear errors, and downloads from a loopback server."""

import functools
import http.server
import itertools
import os
import pty
import re
import select
import shutil
import threading
import time

import keras
import numpy as np
import pytest

import bit_tf
from bit_tf import registry
from bit_tf.download import DownloadError, download
from bit_tf.weights import (
    HEAD_BIAS,
    HEAD_KERNEL,
    CheckpointError,
    official_variables,
    read_checkpoint,
    resolve_checkpoint,
)


def fixture_model(num_classes=10):
    return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=num_classes)


def checkpoint_arrays(path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def write_checkpoint(path, arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_every_variable_is_accounted_for(official_checkpoint):
    model = fixture_model()
    keys = official_variables(model)
    assert set(keys) == set(checkpoint_arrays(official_checkpoint))
    assert len({id(variable) for variable in keys.values()}) == len(model.weights)


def test_save_then_load_round_trips_exactly(official_checkpoint, tmp_path):
    model = bit_tf.load_official_weights(fixture_model(), official_checkpoint)
    saved = bit_tf.save_official_weights(model, tmp_path / "copy.npz")
    original, copy = checkpoint_arrays(official_checkpoint), checkpoint_arrays(saved)
    assert set(copy) == set(original)
    for key in original:
        np.testing.assert_array_equal(copy[key], original[key], err_msg=key)
    reloaded = bit_tf.load_official_weights(fixture_model(), saved)
    for a, b in zip(model.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]


def test_head_of_another_size_stays_zero(official_checkpoint, caplog):
    model = fixture_model(num_classes=3)
    with caplog.at_level("INFO", logger="bit_tf.weights"):
        bit_tf.load_official_weights(model, official_checkpoint)
    assert not np.any(keras.ops.convert_to_numpy(model.get_layer("head").kernel))
    assert "stays zero" in caplog.text
    features = bit_tf.load_official_weights(fixture_model(None), official_checkpoint)
    assert features.output_shape == (None, 2048)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"1 missing key\(s\): resnet/block2/unit01/b/group_norm/gamma"),
        ("extra", r"1 unexpected key\(s\): resnet/block5/unit01/a/group_norm/gamma"),
        ("shape", r"shape mismatch\(es\): resnet/root_block/standardized_conv2d/kernel: "),
    ],
)
def test_mismatched_checkpoints_name_the_key(official_checkpoint, tmp_path, change, message):
    arrays = checkpoint_arrays(official_checkpoint)
    if change == "missing":
        del arrays["resnet/block2/unit01/b/group_norm/gamma"]
    elif change == "extra":
        arrays["resnet/block5/unit01/a/group_norm/gamma"] = np.ones(8, "float32")
    else:
        arrays["resnet/root_block/standardized_conv2d/kernel"] = np.ones((3, 3, 3, 64), "float32")
    path = write_checkpoint(tmp_path / f"{change}.npz", arrays)
    with pytest.raises(CheckpointError, match=message):
        bit_tf.load_official_weights(fixture_model(), path)


def test_another_architecture_lists_the_first_mismatches(official_checkpoint):
    model = bit_tf.create_model("BiT-S-R26x1", num_classes=10)
    with pytest.raises(CheckpointError) as error:
        bit_tf.load_official_weights(model, official_checkpoint)
    text = str(error.value)
    assert "missing key(s): resnet/block1/unit02" in text
    assert "more)" in text and "same architecture" in text


def test_pickled_object_arrays_are_refused_without_unpickling(official_checkpoint, tmp_path):
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arrays = checkpoint_arrays(official_checkpoint)
    arrays["resnet/head/conv2d/bias"] = np.array([Payload()], dtype=object)
    path = write_checkpoint(tmp_path / "pickled.npz", arrays)
    with pytest.raises(CheckpointError, match=r"pickled object array under key 'resnet/head/conv"):
        bit_tf.load_official_weights(fixture_model(), path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_named(official_checkpoint, tmp_path):
    data = open(official_checkpoint, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"truncated.npz' is damaged"):
        read_checkpoint(str(truncated))
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.npz"):
        read_checkpoint(str(text))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(tmp_path / "absent.npz"))


def test_unreleased_and_unknown_names_are_explained():
    with pytest.raises(CheckpointError, match="released no checkpoint"):
        resolve_checkpoint("BiT-L-R50x1")
    with pytest.raises(CheckpointError, match="neither a file, a URL, nor a released"):
        resolve_checkpoint("ResNet50")


class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first request for each file is cut off half-way."""

    cut_once: set = set()

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        path = self.translate_path(self.path)
        if self.path.startswith("/flaky/") and self.path not in self.cut_once:
            self.cut_once.add(self.path)
            body = open(path.replace("/flaky/", "/"), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/flaky/"):
            self.path = self.path.replace("/flaky/", "/")
        super().do_GET()


@pytest.fixture()
def weights_server(official_checkpoint, tmp_path):
    folder = tmp_path / "bucket"
    folder.mkdir()
    data = open(official_checkpoint, "rb").read()
    (folder / "BiT-M-R50x1.npz").write_bytes(data)
    (folder / "r14.npz").write_bytes(data)
    handler = functools.partial(_FlakyHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home / "models" / "bit_tf"


def test_weights_by_url_load_and_match(weights_server, keras_home, reference_outputs):
    model = bit_tf.load_official_weights(fixture_model(), f"{weights_server}/r14.npz")
    logits = keras.ops.convert_to_numpy(model(reference_outputs["images"]))
    np.testing.assert_allclose(logits, reference_outputs["logits"], atol=1e-4)
    assert os.listdir(keras_home) == ["r14.npz"]


def test_released_name_downloads_from_the_mirror_once(weights_server, keras_home, monkeypatch):
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", weights_server)
    path = resolve_checkpoint("BiT-M-R50x1")
    assert path == str(keras_home / "BiT-M-R50x1.npz")
    modified = os.path.getmtime(path)
    assert resolve_checkpoint("BiT-M-R50x1") == path  # served from the cache
    assert os.path.getmtime(path) == modified


def test_a_cut_download_is_retried_and_never_left_partial(weights_server, keras_home):
    path = download(f"{weights_server}/flaky/r14.npz", backoff_seconds=0.05)
    assert read_checkpoint(path)
    assert os.listdir(keras_home) == ["r14.npz"]


def test_a_wrong_sha256_caches_nothing(weights_server, keras_home):
    with pytest.raises(DownloadError, match="sha256 is .* expected 00"):
        download(f"{weights_server}/r14.npz", sha256="00" * 32)
    assert os.listdir(keras_home) == []


def test_without_network_it_fails_at_once_and_says_what_to_do(keras_home):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="pass its local path instead"):
        download("http://does-not-exist.invalid/BiT-M-R50x1.npz")
    with pytest.raises(DownloadError, match="pass its local path instead"):
        download("http://127.0.0.1:9/BiT-M-R50x1.npz", retries=1, backoff_seconds=0.05)
    assert time.monotonic() - started < 20
    assert os.listdir(keras_home) == []


def test_a_missing_file_is_not_retried(weights_server, keras_home):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="404"):
        download(f"{weights_server}/BiT-S-R50x1.npz", backoff_seconds=5)
    assert time.monotonic() - started < 5


# --- Every release by name, from a loopback mirror of the authors' bucket ------------------

# The files the authors' README (google-research/big_transfer) publishes, as it writes them.
README_FILES = (
    "BiT-{S,M}-{R50x1,R101x1,R50x3,R101x3,R152x4,R152x2}.npz",
    "BiT-M-{R50x1,R101x1,R50x3,R101x3,R152x4,R152x2}-ILSVRC2012.npz",
    "vtab/BiT-M-{R50x1,R101x1,R50x3,R101x3,R152x4}-run{0,1,2}-{caltech101,diabetic_retinopathy,"
    "dtd,oxford_flowers102,oxford_iiit_pet,resisc45,sun397,cifar100,eurosat,patch_camelyon,"
    "smallnorb-elevation,svhn,dsprites-orientation,smallnorb-azimuth,clevr-distance,clevr-count,"
    "dmlab,kitti-distance,dsprites-xpos}.npz",
    "distill/R50x1_224.npz",
    "distill/R50x1_160.npz",
    "distill/R152x2_T_224.npz",
    "distill/R152x2_T_384.npz",
)


def expand_braces(pattern: str) -> list[str]:
    """Shell brace expansion of one level, as the README's wget lines use it."""
    pieces = re.split(r"\{([^}]*)\}", pattern)
    choices = [
        [piece] if index % 2 == 0 else piece.split(",") for index, piece in enumerate(pieces)
    ]
    return ["".join(parts) for parts in itertools.product(*choices)]


PUBLISHED_FILES = sorted(file for pattern in README_FILES for file in expand_braces(pattern))


def with_head(arrays: dict, num_classes: int, seed: int) -> dict:
    generator = np.random.default_rng(seed)
    features = arrays[HEAD_KERNEL].shape[-2]
    head = {
        HEAD_KERNEL: generator.normal(size=(1, 1, features, num_classes)).astype("float32"),
        HEAD_BIAS: generator.normal(size=(num_classes,)).astype("float32"),
    }
    return {**arrays, **head}


def in_big_vision_layout(arrays: dict) -> dict:
    """The arrays under big_vision's names (`big_vision/models/bit_paper.py`)."""
    converted = {}
    for key, value in arrays.items():
        name = key.removeprefix("resnet/")
        name = name.replace("root_block/standardized_conv2d/kernel", "root_block/conv_root/kernel")
        name = re.sub(r"/a/proj/standardized_conv2d/kernel$", "/conv_proj/kernel", name)
        for index, part in enumerate("abc", 1):
            name = name.replace(f"/{part}/standardized_conv2d/kernel", f"/conv{index}/kernel")
            if f"/{part}/group_norm/" in name:
                name = name.replace(f"/{part}/group_norm/", f"/gn{index}/")
                value = value.reshape(1, 1, 1, -1)
        if name.startswith("group_norm/"):
            name = "norm-pre-head/" + name.removeprefix("group_norm/")
            value = value.reshape(1, 1, 1, -1)
        if name.startswith("head/conv2d/"):
            name = "head/" + name.removeprefix("head/conv2d/")
            value = value[0, 0] if value.ndim == 4 else value
        converted[name.replace("gamma", "scale").replace("beta", "bias")] = value
    return converted


@pytest.fixture(scope="module")
def authors_mirror(official_checkpoint, tmp_path_factory):
    """A loopback server holding every published file at the authors' paths: random weights of
    the R14x1 fixture (one unit per block) with the right width, and the right head where a test
    loads the file."""
    folder = tmp_path_factory.mktemp("bit_models")
    original = checkpoint_arrays(official_checkpoint)
    shutil.copyfile(official_checkpoint, folder / "fixture.npz")
    for file in PUBLISHED_FILES:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        os.link(folder / "fixture.npz", folder / file)  # hard links: no copies of the bytes
    written = {
        "vtab/BiT-M-R50x1-run0-caltech101.npz": with_head(original, 102, seed=1),
        "BiT-M-R50x1-ILSVRC2012.npz": with_head(original, 1000, seed=2),
        "distill/R50x1_224.npz": in_big_vision_layout(with_head(original, 1000, seed=3)),
    }
    for file, arrays in written.items():
        os.remove(folder / file)
        write_checkpoint(folder / file, arrays)
    handler = functools.partial(_FlakyHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def test_every_published_file_has_a_name_and_every_name_a_file():
    files = [registry.RELEASES[name].file for name in bit_tf.list_released_checkpoints()]
    assert sorted(files) == PUBLISHED_FILES
    assert len(files) == len(set(files)) == 18 + 285 + 4


def test_a_vtab_checkpoint_loads_by_name_with_its_head(authors_mirror, keras_home, monkeypatch):
    url, folder = authors_mirror
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
    name = "BiT-M-R50x1-run0-caltech101"
    model = bit_tf.create_model(name, weights=name, units_per_block=(1, 1, 1, 1))
    assert model.output_shape == (None, 102)
    stored = checkpoint_arrays(folder / "vtab" / f"{name}.npz")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("head").kernel), stored[HEAD_KERNEL][0, 0]
    )
    assert os.listdir(keras_home) == [f"{name}.npz"]
    # ILSVRC-2012 fine-tuned: the 1000-class head, also for the upstream model's name.
    imagenet = bit_tf.create_model(
        "BiT-M-R50x1", weights="BiT-M-R50x1-ILSVRC2012", units_per_block=(1, 1, 1, 1)
    )
    assert imagenet.output_shape == (None, 1000)


def test_a_distilled_student_in_big_vision_layout_matches_the_reference(
    authors_mirror, keras_home, monkeypatch, reference_outputs
):
    url, folder = authors_mirror
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
    name = "BiT-R50x1-distilled-224"
    model = bit_tf.create_model(name, weights=name, units_per_block=(1, 1, 1, 1))
    stored = checkpoint_arrays(folder / "distill" / "R50x1_224.npz")
    assert "root_block/conv_root/kernel" in stored and "head/kernel" in stored
    expected = reference_outputs["features"] @ stored["head/kernel"] + stored["head/bias"]
    logits = keras.ops.convert_to_numpy(model(reference_outputs["images"]))
    np.testing.assert_allclose(logits, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())
    assert os.listdir(keras_home) == [f"{name}.npz"]


def test_teachers_and_students_resolve_to_the_authors_files(
    authors_mirror, keras_home, monkeypatch
):
    url, folder = authors_mirror
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
    for name, file in [
        ("BiT-M-R152x2-teacher-384", "distill/R152x2_T_384.npz"),
        ("BiT-R50x1-distilled-160", "distill/R50x1_160.npz"),
        ("BiT-M-R152x4-run2-dsprites-xpos", "vtab/BiT-M-R152x4-run2-dsprites-xpos.npz"),
    ]:
        path = resolve_checkpoint(name)
        assert path == str(keras_home / f"{name}.npz")
        assert open(path, "rb").read() == (folder / file).read_bytes()


def test_download_progress_is_drawn_on_a_terminal_only(weights_server, keras_home, tmp_path):
    leader, follower = pty.openpty()
    with open(follower, "w") as terminal:
        download(f"{weights_server}/r14.npz", progress_stream=terminal)
    shown = _read_everything_written(leader)
    size = os.path.getsize(keras_home / "r14.npz")
    assert f"r14.npz: {size / 2**20:.1f} MiB of {size / 2**20:.1f} MiB (100%)" in shown
    assert "/s, 0 s left" in shown
    os.remove(keras_home / "r14.npz")
    with open(tmp_path / "log.txt", "w") as log_file:
        download(f"{weights_server}/r14.npz", progress_stream=log_file)
    assert (tmp_path / "log.txt").read_text() == ""


def _read_everything_written(leader: int) -> str:
    """What the download drew, up to its final newline.

    A pseudo-terminal passes writes on to its leader asynchronously, so one read can return
    only the first of them; this reads until the closing newline arrives (or 10 s pass).
    """
    chunks = b""
    deadline = time.monotonic() + 10
    while b"\n" not in chunks and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunks += os.read(leader, 1 << 16)
            except OSError:  # EIO: the follower is closed and everything was read
                break
    os.close(leader)
    return chunks.decode()
