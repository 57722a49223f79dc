"""timm's BiT checkpoints: read (a file, or a Hugging Face Hub repository through a loopback Hub)
and written, against the authors' reference outputs.

The timm-layout files of these tests are written here, with `safetensors.numpy` and a key mapping
of the test's own (`TIMM_KEYS_OF_THE_FIXTURE`), so that the library's mapping is checked, not
echoed. The Hub is an HTTP server on 127.0.0.1 answering what `huggingface_hub.hf_hub_download`
asks (HEAD and GET of /<repo>/resolve/<revision>/<file>), set as HF_ENDPOINT.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.parse

import huggingface_hub.constants
import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bit_tf
from bit_cli import common
from bit_tf.models import hf_hub, registry, timm_weights
from bit_tf.models.download import DownloadError
from bit_tf.models.resnet_v2 import resnet_v2
from bit_tf.models.weights import CheckpointError, official_variables

from numerics import PARITY_TOLERANCE, relative_error

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_UNITS = (1, 1, 1, 1)
REPO_ID = "someone/bit-r14x1"

# --- The fixture in timm's layout, written by a mapping of the test's own --------------------


def timm_key_of_fixture_key(key: str) -> str:
    """timm's name of an official key of the R14x1 fixture, spelled out as timm's
    `_load_weights` (timm/models/resnetv2.py) reads the authors' files."""
    fixed = {
        "resnet/root_block/standardized_conv2d/kernel": "stem.conv.weight",
        "resnet/group_norm/gamma": "norm.weight",
        "resnet/group_norm/beta": "norm.bias",
        "resnet/head/conv2d/kernel": "head.fc.weight",
        "resnet/head/conv2d/bias": "head.fc.bias",
    }
    if key in fixed:
        return fixed[key]
    _, block, unit, part, *rest = key.split("/")
    stage = int(block.removeprefix("block")) - 1
    index = int(unit.removeprefix("unit")) - 1
    prefix = f"stages.{stage}.blocks.{index}"
    number = {"a": 1, "b": 2, "c": 3}[part]
    if rest == ["proj", "standardized_conv2d", "kernel"]:
        return f"{prefix}.downsample.conv.weight"
    if rest == ["standardized_conv2d", "kernel"]:
        return f"{prefix}.conv{number}.weight"
    return f"{prefix}.norm{number}." + {"gamma": "weight", "beta": "bias"}[rest[1]]


def timm_tensors_of(npz_path: str) -> dict[str, np.ndarray]:
    """The arrays of an official .npz as timm holds them: its keys, kernels OIHW."""
    tensors = {}
    with np.load(npz_path) as archive:
        for key in archive.files:
            value = archive[key]
            if value.ndim == 4:  # HWIO -> OIHW, as timm's t2p
                value = value.transpose(3, 2, 0, 1)
            tensors[timm_key_of_fixture_key(key)] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors


def timm_config_json(architecture: str = "resnetv2_14x1_bit", num_classes: int = 10) -> bytes:
    """A config.json as timm's save_config_for_hf writes it."""
    return json.dumps(
        {
            "architecture": architecture,
            "num_classes": num_classes,
            "num_features": 2048,
            "global_pool": "avg",
            "pretrained_cfg": {
                "tag": "test",
                "custom_load": False,
                "input_size": [3, 224, 224],
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "num_classes": num_classes,
                "first_conv": "stem.conv",
                "classifier": "head.fc",
            },
        }
    ).encode()


@pytest.fixture(scope="module")
def fixture_in_timm_layout(official_checkpoint, tmp_path_factory) -> str:
    """A folder holding the R14x1 fixture as timm writes checkpoints: model.safetensors +
    config.json."""
    folder = tmp_path_factory.mktemp("timm_fixture")
    save_file(timm_tensors_of(official_checkpoint), str(folder / "model.safetensors"))
    (folder / "config.json").write_bytes(timm_config_json())
    return str(folder)


@pytest.fixture(scope="module")
def npz_model(official_checkpoint):
    model = resnet_v2(units_per_block=FIXTURE_UNITS, num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


def logits(model, images) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(images))


# --- The names, the files ---------------------------------------------------------------------


def test_the_names_are_timms_and_map_back(npz_model):
    keys = list(official_variables(npz_model))
    assert len(keys) == 45
    for key in keys:
        name = timm_weights.timm_name(key)
        assert name == timm_key_of_fixture_key(key), key
        assert timm_weights.official_name_of_timm_key(name) == key
    # Deeper units and blocks: the numbering counts from 0 in timm, from 01 officially.
    assert timm_weights.official_name_of_timm_key("stages.2.blocks.22.conv2.weight") == (
        "resnet/block3/unit23/b/standardized_conv2d/kernel"
    )
    assert timm_weights.official_name_of_timm_key("stages.0.blocks.0.norm1.running_mean") is None
    with pytest.raises(CheckpointError, match="GroupNorm and weight-standardized"):
        timm_weights.timm_name("resnet/block1/unit01/a/batch_norm/gamma")


def test_fixture_written_in_timms_layout_matches_the_reference(
    fixture_in_timm_layout, npz_model, reference_outputs
):
    images = reference_outputs["images"]
    path = os.path.join(fixture_in_timm_layout, "model.safetensors")
    # bit-export / bit-predict's way: the architecture and the head read from the file.
    model = common.build_model("", path)
    assert model.output_shape == (None, 10)
    timm_logits = logits(model, images)
    assert relative_error(timm_logits, reference_outputs["logits"]) < PARITY_TOLERANCE
    assert relative_error(timm_logits, logits(npz_model, images)) < PARITY_TOLERANCE
    features = common.build_model("", path, num_classes=None)
    assert relative_error(features(images), reference_outputs["features"]) < PARITY_TOLERANCE
    # load_timm_weights into a model of the same architecture gives the same weights.
    loaded = bit_tf.load_timm_weights(
        resnet_v2(units_per_block=FIXTURE_UNITS, num_classes=10), path
    )
    for mine, theirs in zip(loaded.get_weights(), npz_model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_save_then_load_gives_identical_weights(npz_model, tmp_path):
    npz_model.class_names = [f"class {index}" for index in range(10)]
    try:
        path = bit_tf.save_timm_weights(npz_model, tmp_path / "export")
    finally:
        npz_model.class_names = None
    assert path == str(tmp_path / "export" / "model.safetensors")
    assert sorted(os.listdir(tmp_path / "export")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architecture"] == "resnetv2_14x1_bit"
    assert (config["num_classes"], config["num_features"]) == (10, 2048)
    assert config["label_names"][:2] == ["class 0", "class 1"]
    assert config["pretrained_cfg"]["mean"] == config["pretrained_cfg"]["std"] == [0.5] * 3
    # The file holds timm's keys and layout, float32, as the test's own mapping writes them.
    tensors = load_file(path)
    expected = {
        timm_key_of_fixture_key(key): variable
        for key, variable in official_variables(npz_model).items()
    }
    assert set(tensors) == set(expected)
    assert tensors["stem.conv.weight"].shape == (64, 3, 7, 7)
    assert tensors["head.fc.weight"].shape == (10, 2048, 1, 1)
    assert all(tensor.dtype == np.float32 for tensor in tensors.values())

    reloaded = common.build_model("", path)
    for mine, theirs in zip(reloaded.get_weights(), npz_model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # Nothing is overwritten unless asked.
    with pytest.raises(FileExistsError, match="overwrite=True"):
        bit_tf.save_timm_weights(npz_model, tmp_path / "export")
    headless = common.build_model("", path, num_classes=None)
    bit_tf.save_timm_weights(headless, tmp_path / "export", overwrite=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["num_classes"] == 0
    assert "head.fc.weight" not in load_file(path)


def test_files_that_are_no_timm_bit_are_refused_in_one_line(fixture_in_timm_layout, tmp_path):
    def refused(folder, config: bytes | None, tensors: dict) -> str:
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        if config is not None:
            (folder / "config.json").write_bytes(config)
        with pytest.raises(CheckpointError) as raised:
            common.build_model("", str(folder / "model.safetensors"))
        message = str(raised.value)
        assert "\n" not in message
        return message

    tensors = load_file(os.path.join(fixture_in_timm_layout, "model.safetensors"))
    vit = timm_config_json("vit_base_patch16_224")
    assert "'vit_base_patch16_224', not a BiT" in refused(tmp_path / "vit", vit, tensors)
    batch_norm = {**tensors, "stages.0.blocks.0.norm1.running_mean": np.zeros(64, np.float32)}
    message = refused(tmp_path / "bn", None, batch_norm)
    assert "not a timm BiT checkpoint: 1 key(s)" in message and "running_mean" in message
    wrong_head = timm_config_json(num_classes=1000)
    assert "num_classes=1000" in refused(tmp_path / "head", wrong_head, tensors)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        bit_tf.create_model("BiT-M-R50x1", weights=str(damaged))
    with pytest.raises(CheckpointError, match="does not name a Hugging Face Hub repository"):
        bit_tf.create_model("BiT-M-R50x1", weights="hf-hub:no-owner")


def test_timms_releases_resolve_like_the_authors_names():
    names = bit_tf.list_released_checkpoints("timm")
    assert len(names) == 15
    assert {
        "resnetv2_50x1_bit.goog_in21k",
        "resnetv2_50x1_bit.goog_in21k_ft_in1k",
        "resnetv2_152x4_bit.goog_in21k",
        "resnetv2_50x1_bit.goog_distilled_in1k",
        "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384",
    } <= set(names)
    release = registry.find_timm_release("hf-hub:timm/resnetv2_152x4_bit.goog_in21k_ft_in1k")
    assert (release.depth, release.width, release.num_classes, release.input_size) == (
        152,
        4,
        1000,
        480,
    )
    assert release.same_as == "BiT-M-R152x4-ILSVRC2012"
    assert registry.find_release(release.same_as) is not None
    assert registry.architecture("resnetv2_101x3_bit.goog_in21k") == (101, 3)
    assert registry.default_num_classes("resnetv2_101x3_bit.goog_in21k") == 21843
    for name in names:  # each is a timm architecture, and names one of the authors' files
        found = registry.find_timm_release(name)
        assert name.split(".")[0] in timm_weights.TIMM_ARCHITECTURES
        assert registry.find_release(found.same_as).num_classes == found.num_classes


# --- Downloads through huggingface_hub, from a Hub on 127.0.0.1 -------------------------------


class LoopbackHub(http.server.ThreadingHTTPServer):
    """Answers hf_hub_download's requests for the repositories in `repositories`:
    {repo_id: {revision: (commit hash, {file name: bytes})}}. Records (method, path)."""

    def __init__(self, repositories: dict):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repositories = repositories
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):  # noqa: N802 - the http.server API
        self.answer(send_body=False)

    def do_GET(self):  # noqa: N802 - the http.server API
        self.answer(send_body=True)

    def answer(self, send_body: bool) -> None:
        hub: LoopbackHub = self.server
        path = urllib.parse.urlparse(self.path).path
        hub.requests.append((self.command, path))
        parts = [urllib.parse.unquote(part) for part in path.strip("/").split("/")]
        if len(parts) != 5 or parts[2] != "resolve":
            return self.error(404, "RepoNotFound")
        repo_id, revision, name = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
        if repo_id not in hub.repositories:
            return self.error(404, "RepoNotFound")
        revisions = hub.repositories[repo_id]
        by_commit = {commit: files for commit, files in revisions.values()}
        if revision in revisions:
            commit, files = revisions[revision]
        elif revision in by_commit:
            commit, files = revision, by_commit[revision]
        else:
            return self.error(404, "RevisionNotFound")
        if name not in files:
            return self.error(404, "EntryNotFound", commit)
        body = files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def error(self, status: int, code: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


def commit_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def hub_files(fixture_in_timm_layout) -> dict:
    """The repositories of the loopback Hub: the fixture at "main", the fixture with its head
    doubled at "v1", and a repository whose config.json describes a ViT."""
    folder = fixture_in_timm_layout
    weights = open(os.path.join(folder, "model.safetensors"), "rb").read()
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    doubled = {**tensors, "head.fc.bias": tensors["head.fc.bias"] * 2 + 1}
    doubled_path = os.path.join(folder, "..", "doubled.safetensors")
    save_file(doubled, doubled_path)
    config = timm_config_json()
    return {
        REPO_ID: {
            "main": (commit_hash("main"), {"model.safetensors": weights, "config.json": config}),
            "v1": (
                commit_hash("v1"),
                {"model.safetensors": open(doubled_path, "rb").read(), "config.json": config},
            ),
        },
        "someone/a-vit": {
            "main": (
                commit_hash("vit"),
                {"model.safetensors": weights, "config.json": timm_config_json("vit_small")},
            )
        },
    }


@pytest.fixture()
def hub(hub_files, tmp_path, monkeypatch):
    """A loopback Hub set as HF_ENDPOINT, with huggingface_hub's cache under tmp_path.

    huggingface_hub 2.x asks the endpoint it read at its import (which may be the real Hub:
    TensorFlow Datasets imports it) for a list of "agent harnesses" to report in its user agent,
    unless telemetry is off: it is turned off here, so that nothing leaves 127.0.0.1.
    """
    server = LoopbackHub(hub_files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # for the command's own process
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.shutdown()
    server.server_close()


def test_a_hub_repository_loads_once_per_revision_into_the_cache(
    hub, npz_model, reference_outputs, tmp_path, capfd
):
    images = reference_outputs["images"]
    model = common.build_model("", f"hf-hub:{REPO_ID}")
    assert model.name == "bit-r14x1".replace("-", "_")
    assert relative_error(logits(model, images), reference_outputs["logits"]) < PARITY_TOLERANCE
    # The config comes first, then the weights; nothing is drawn on a pipe.
    gets = [path for method, path in hub.requests if method == "GET"]
    assert gets == [
        f"/{REPO_ID}/resolve/main/config.json",
        f"/{REPO_ID}/resolve/main/model.safetensors",
    ]
    assert "model.safetensors" not in capfd.readouterr().err

    # The cache is keyed by repository and revision: "v1" is another snapshot.
    snapshots = tmp_path / "hf_home" / "hub" / "models--someone--bit-r14x1" / "snapshots"
    assert sorted(os.listdir(snapshots)) == [commit_hash("main")]
    doubled = common.build_model("", f"hf-hub:{REPO_ID}@v1")
    assert sorted(os.listdir(snapshots)) == sorted([commit_hash("main"), commit_hash("v1")])
    bias = keras.ops.convert_to_numpy(doubled.get_layer("head").bias)
    expected = keras.ops.convert_to_numpy(npz_model.get_layer("head").bias) * 2 + 1
    np.testing.assert_allclose(bias, expected, rtol=1e-6)

    # Again: the revision is checked (HEAD), the file not downloaded again.
    before = len([request for request in hub.requests if request[0] == "GET"])
    common.build_model("", f"hf-hub:{REPO_ID}")
    assert len([request for request in hub.requests if request[0] == "GET"]) == before


def fails_in_one_line(weights: str, error_type: type[Exception] = DownloadError) -> str:
    """The message of the error that building a model of `weights` raises (one line)."""
    with pytest.raises(error_type) as raised:
        common.build_model("", weights)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


def test_offline_unknown_and_foreign_repositories_are_one_line(hub, monkeypatch):
    common.build_model("", f"hf-hub:{REPO_ID}")  # cached
    # A repository whose config describes another architecture: refused before its weights.
    message = fails_in_one_line("hf-hub:someone/a-vit", CheckpointError)
    assert "'vit_small', not a BiT" in message
    assert ("GET", "/someone/a-vit/resolve/main/model.safetensors") not in hub.requests
    message = fails_in_one_line("hf-hub:someone/no-such-model")
    assert "No repository 'someone/no-such-model' on http://127.0.0.1:" in message
    assert "no revision 'v9'" in fails_in_one_line(f"hf-hub:{REPO_ID}@v9")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    common.build_model("", f"hf-hub:{REPO_ID}")  # from the cache, without a request
    assert hub.requests == []
    message = fails_in_one_line(f"hf-hub:{REPO_ID}@v1")
    assert "offline (HF_HUB_OFFLINE is set) and it is not in the cache" in message
    assert f"hf-hub:{REPO_ID}@v1" in message


@pytest.mark.slow
def test_an_unreachable_endpoint_is_one_line(hub):
    hub.shutdown()
    hub.server_close()  # nothing listens on the endpoint any more
    # huggingface_hub retries a connection 5 times, 1 to 8 s apart (about 23 s), then fails.
    message = fails_in_one_line(f"hf-hub:{REPO_ID}")
    assert f"from {hub.url}" in message and "Check the network or HF_ENDPOINT" in message
    assert "ConnectError" in message


def test_a_terminal_gets_huggingface_hubs_progress_bar(hub, monkeypatch):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    stream = os.fdopen(terminal, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        hf_hub.download_file(REPO_ID, "model.safetensors")
        stream.flush()
    finally:
        monkeypatch.undo()
        stream.close()
    # A pseudo-terminal passes writes on to its controller asynchronously: read until the
    # closed terminal side says everything was read (EIO), not once.
    drawn = b""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                chunk = os.read(controller, 1 << 16)
                if not chunk:
                    break
                drawn += chunk
    except OSError:  # EIO: the terminal side is closed and everything was read
        pass
    finally:
        os.close(controller)
    drawn = drawn.decode(errors="replace")
    assert "model.safetensors" in drawn and "100%" in drawn


@pytest.mark.slow
def test_bit_export_writes_timm_files_of_a_hub_checkpoint(hub, npz_model, tmp_path):
    environment = {**os.environ, "PYTHONPATH": REPOSITORY}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bit_cli.export",
            f"--weights=hf-hub:{REPO_ID}",
            "--kind=classification",
            "--format=timm",
            "--export_dir=out",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"timm: {os.path.join('out', 'model.safetensors')}" in result.stdout
    exported = common.build_model("", str(tmp_path / "out" / "model.safetensors"))
    for mine, theirs in zip(exported.get_weights(), npz_model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
