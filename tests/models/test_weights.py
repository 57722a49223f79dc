"""Official checkpoints: loading, saving, clear errors, and downloads from a loopback server."""

import itertools
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from loopback_server import LOGIN_PAGE, serve

import bit_tf
from bit_tf.models import registry
from bit_tf.models.download import cache_path, recorded_sha256, sha256_of
from bit_tf.models.weights import (
    HEAD_BIAS,
    HEAD_KERNEL,
    OFFICIAL_BASE_URL,
    CheckpointError,
    official_variables,
    read_checkpoint,
    released_url,
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
    with caplog.at_level("INFO", logger="bit_tf.models.weights"):
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


@pytest.fixture()
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("BIT_TF_WEIGHTS_URL", raising=False)
    return home / "models" / "bit_tf"


def test_weights_by_url_load_and_match(
    official_checkpoint, tmp_path, keras_home, reference_outputs
):
    shutil.copyfile(official_checkpoint, tmp_path / "r14.npz")
    with serve(tmp_path) as url:
        model = bit_tf.load_official_weights(fixture_model(), f"{url}/r14.npz")
    logits = keras.ops.convert_to_numpy(model(reference_outputs["images"]))
    np.testing.assert_allclose(logits, reference_outputs["logits"], atol=1e-4)
    folder = os.path.dirname(cache_path(f"{url}/r14.npz"))
    assert sorted(os.listdir(folder)) == ["r14.npz", "r14.npz.sha256"]


def test_a_keras_model_or_a_web_page_under_an_npz_name_is_named(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.save(tmp_path / "model.keras")
    os.rename(tmp_path / "model.keras", tmp_path / "model.npz")
    with pytest.raises(CheckpointError, match=r"model.npz' is a Keras model file \(.keras"):
        read_checkpoint(str(tmp_path / "model.npz"))
    (tmp_path / "page.npz").write_bytes(LOGIN_PAGE)
    with pytest.raises(CheckpointError, match="page.npz' is an HTML page, not a checkpoint"):
        read_checkpoint(str(tmp_path / "page.npz"))
    np.save(tmp_path / "single.npy", np.ones(3))
    os.rename(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(CheckpointError, match="single .npy array, not an .npz archive"):
        read_checkpoint(str(tmp_path / "single.npz"))


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
    # Not in that README: the 128-px teachers of big_vision's configs/proj/distill/common.py.
    "distill/R152x2_T_{flowers,pet,food,sun}128.npz",
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


def random_checkpoint(path, name: str, num_classes: int) -> str:
    """A checkpoint of random weights with the architecture of `name` and `num_classes`."""
    return bit_tf.save_official_weights(bit_tf.create_model(name, num_classes=num_classes), path)


@pytest.fixture(scope="module")
def authors_mirror(official_checkpoint, tmp_path_factory):
    """A loopback server holding every published file at the authors' paths. The files a test
    loads by name have the release's architecture and head (random weights); the distilled
    student of 224 px is the fixture in big_vision's layout (loaded by URL); BiT-S-R50x1 is a
    10-class R18x1, the wrong file under a released name; the others are links to the fixture."""
    folder = tmp_path_factory.mktemp("bit_models")
    original = checkpoint_arrays(official_checkpoint)
    shutil.copyfile(official_checkpoint, folder / "fixture.npz")
    for file in PUBLISHED_FILES:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        os.link(folder / "fixture.npz", folder / file)  # hard links: no copies of the bytes
    for file in (
        "vtab/BiT-M-R50x1-run0-caltech101.npz",
        "BiT-M-R50x1-ILSVRC2012.npz",
        "distill/R50x1_160.npz",
        "distill/R50x1_224.npz",
        "BiT-S-R50x1.npz",
    ):
        os.remove(folder / file)
    random_checkpoint(folder / "vtab/BiT-M-R50x1-run0-caltech101.npz", "BiT-M-R50x1", 102)
    random_checkpoint(folder / "BiT-M-R50x1-ILSVRC2012.npz", "BiT-M-R50x1", 1000)
    os.link(folder / "BiT-M-R50x1-ILSVRC2012.npz", folder / "distill/R50x1_160.npz")
    random_checkpoint(folder / "BiT-S-R50x1.npz", "BiT-S-R18x1", 10)
    write_checkpoint(
        folder / "distill/R50x1_224.npz", in_big_vision_layout(with_head(original, 1000, seed=3))
    )
    with serve(folder) as url:
        yield url, folder


def test_every_published_file_has_a_name_and_every_name_a_file():
    files = [registry.RELEASES[name].file for name in bit_tf.list_released_checkpoints()]
    assert sorted(files) == PUBLISHED_FILES
    assert len(files) == len(set(files)) == 18 + 285 + 4 + 4


def test_a_vtab_checkpoint_loads_by_name_with_its_head(authors_mirror, keras_home, monkeypatch):
    url, folder = authors_mirror
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
    name = "BiT-M-R50x1-run0-caltech101"
    model = bit_tf.create_model(name, weights=name)
    assert model.output_shape == (None, 102)
    stored = checkpoint_arrays(folder / "vtab" / f"{name}.npz")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("head").kernel), stored[HEAD_KERNEL][0, 0]
    )
    path = cache_path(f"{url}/vtab/{name}.npz")  # a mirror's file: under its URL's key
    assert sorted(os.listdir(os.path.dirname(path))) == [f"{name}.npz", f"{name}.npz.sha256"]
    # ILSVRC-2012 fine-tuned: the 1000-class head, also for the upstream model's name.
    imagenet = bit_tf.create_model("BiT-M-R50x1", weights="BiT-M-R50x1-ILSVRC2012")
    assert imagenet.output_shape == (None, 1000)


def test_a_released_name_serving_another_architecture_is_refused(
    authors_mirror, keras_home, monkeypatch
):
    url, _ = authors_mirror
    monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint("BiT-S-R50x1")
    assert str(error.value) == (
        f"The file served as BiT-S-R50x1 ({url}/BiT-S-R50x1.npz) is not that checkpoint: it "
        "holds an R18x1 with a 10-class head, where BiT-S-R50x1 is an R50x1 with a 1000-class "
        "head. Nothing was cached."
    )
    assert [files for _, _, files in os.walk(keras_home) if files] == []
    # From a command: that line, status 2, nothing written.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bit_cli.export",
            "--weights=BiT-S-R50x1",
            f"--export_dir={keras_home.parent / 'export'}",
        ],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()  # an INFO line says what is downloaded
    assert lines[-1] == f"bit-export: error: {error.value}", completed.stderr
    assert "Traceback" not in completed.stderr and len(lines) <= 2, completed.stderr
    assert not (keras_home.parent / "export").exists()


def test_a_released_file_cached_before_the_records_is_checked_and_kept(authors_mirror, keras_home):
    _, folder = authors_mirror
    keras_home.mkdir(parents=True)
    # Where earlier versions cached the authors' files; checked and kept without a download
    # (the authors' bucket is not reachable from the tests).
    shutil.copyfile(folder / "distill/R50x1_160.npz", keras_home / "BiT-R50x1-distilled-160.npz")
    path = resolve_checkpoint("BiT-R50x1-distilled-160")
    assert path == str(keras_home / "BiT-R50x1-distilled-160.npz")
    assert recorded_sha256(path) == sha256_of(path)


def test_a_distilled_student_in_big_vision_layout_matches_the_reference(
    authors_mirror, keras_home, reference_outputs
):
    url, folder = authors_mirror
    name = "BiT-R50x1-distilled-224"
    model = bit_tf.create_model(
        name, weights=f"{url}/distill/R50x1_224.npz", units_per_block=(1, 1, 1, 1)
    )
    stored = checkpoint_arrays(folder / "distill" / "R50x1_224.npz")
    assert "root_block/conv_root/kernel" in stored and "head/kernel" in stored
    expected = reference_outputs["features"] @ stored["head/kernel"] + stored["head/bias"]
    logits = keras.ops.convert_to_numpy(model(reference_outputs["images"]))
    np.testing.assert_allclose(logits, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


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
        assert released_url(name) == f"{url}/{file}"
    path = resolve_checkpoint("BiT-R50x1-distilled-160")
    assert path == cache_path(f"{url}/distill/R50x1_160.npz")
    assert open(path, "rb").read() == (folder / "distill/R50x1_160.npz").read_bytes()
    monkeypatch.delenv("BIT_TF_WEIGHTS_URL")
    teacher = released_url("BiT-M-R152x2-teacher-384")
    assert teacher == f"{OFFICIAL_BASE_URL}/distill/R152x2_T_384.npz"


@pytest.mark.parametrize(
    "dataset, classes", [("flowers", 102), ("pet", 37), ("food", 101), ("sun", 397)]
)
def test_the_128px_teachers_download_by_name_from_the_mirror(
    dataset, classes, tmp_path, keras_home, monkeypatch
):
    # A small file under the teacher's path: it is fetched from BIT_TF_WEIGHTS_URL by the name,
    # and refused because it is not an R152x2 with the teacher's head.
    name = f"BiT-M-R152x2-teacher-{dataset}-128"
    (tmp_path / "distill").mkdir()
    random_checkpoint(tmp_path / f"distill/R152x2_T_{dataset}128.npz", "BiT-S-R18x1", classes)
    with serve(tmp_path) as url:
        monkeypatch.setenv("BIT_TF_WEIGHTS_URL", url)
        assert released_url(name) == f"{url}/distill/R152x2_T_{dataset}128.npz"
        with pytest.raises(CheckpointError) as error:
            resolve_checkpoint(name)
    assert str(error.value) == (
        f"The file served as {name} ({url}/distill/R152x2_T_{dataset}128.npz) is not that "
        f"checkpoint: it holds an R18x1 with a {classes}-class head, where {name} is an "
        f"R152x2 with a {classes}-class head. Nothing was cached."
    )
