"""The bit-export command: a checkpoint in, a hub module, a serving model and an archive out."""

import functools
import http.server
import os
import subprocess
import sys
import tarfile
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
from bit_cli import export as export_command
from hub_export.serving import hyperrule_image_size

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPOSITORY}


def bit_export(*flags: str, cwd, environment=None) -> subprocess.CompletedProcess:
    """Runs `python -m bit_cli.export` with these flags in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "bit_cli.export", *flags],
        env=environment or ENVIRONMENT,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    """The `bit-export: error: ...` line of a run that failed on a user error (status 2)."""
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("bit-export: error: "), completed.stderr[-3000:]
    return error


@pytest.mark.slow
def test_bit_export_writes_module_serving_model_and_archive(official_checkpoint, tmp_path):
    class_names = [f"flower_{index}" for index in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(class_names) + "\n")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bit_cli.export",
            f"--weights={official_checkpoint}",
            "--kind=classification",
            f"--export_dir={tmp_path / 'module'}",
            f"--serving_dir={tmp_path / 'serving'}",
            f"--class_names={tmp_path / 'labels.txt'}",
            f"--publish_to={tmp_path / 'hub'}",
            "--publish_name=bit/r14x1",
            "--publish_version=2",
        ],
        env=ENVIRONMENT,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"published: {tmp_path / 'hub' / 'bit' / 'r14x1' / '2.tar.gz'}" in completed.stdout
    # No --image_size and a model of any input size: the HyperRule's crop for large images.
    image_size = bit_tf.finetune.hyperrule.get_resolution((224, 224))[1]
    assert f"serving image size: {image_size} (BiT-HyperRule" in completed.stdout

    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    bit_tf.load_official_weights(model, official_checkpoint)
    images = np.random.default_rng(7).uniform(size=(2, 32, 32, 3)).astype("float32")
    module_outputs = tf.saved_model.load(str(tmp_path / "module"))(images).numpy()
    expected = model(images).numpy()
    # Two float32 implementations (the module's plain-TF graph, the fused kernels): round-off.
    assert np.max(np.abs(module_outputs - expected)) / np.max(np.abs(expected)) < 5e-5

    serving = tf.saved_model.load(str(tmp_path / "serving" / "1"))
    answer = serving.signatures["predict_images"](images=tf.constant(images))
    top_names = [name.decode() for name in answer["top_k_class_names"].numpy()[0]]
    resized = tf.image.resize(images, [image_size, image_size])
    expected_probabilities = tf.nn.softmax(model(resized)).numpy()
    assert np.allclose(answer["probabilities"].numpy(), expected_probabilities, atol=1e-4)
    assert top_names == [class_names[i] for i in answer["top_k_class_ids"].numpy()[0]]
    with tarfile.open(tmp_path / "hub" / "bit" / "r14x1" / "2.tar.gz") as archive:
        assert "saved_model.pb" in archive.getnames()
    assert (tmp_path / "hub" / "bit" / "r14x1" / "2.md").exists()


def test_load_model_reads_fine_tuned_keras_files(tmp_path, official_checkpoint):
    classifier = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=4)
    bit_tf.load_official_weights(classifier, official_checkpoint)
    classifier.get_layer("head").bias.assign(np.arange(4, dtype="float32"))
    path = str(tmp_path / "fine_tuned.keras")
    classifier.save(path)
    images = np.random.default_rng(8).uniform(size=(1, 32, 32, 3)).astype("float32")

    loaded = export_command.load_model("", path, "classification", 0)
    assert np.allclose(loaded(images), classifier(images), atol=1e-6)
    backbone = export_command.load_model("", path, "feature_vector", 0)
    assert backbone.output_shape == (None, 2048)
    features = keras.Model(classifier.input, classifier.get_layer("pre_logits").output)(images)
    assert np.allclose(backbone(images), features, atol=1e-6)


def test_load_model_takes_the_head_size_from_the_checkpoint(official_checkpoint):
    model = export_command.load_model("", official_checkpoint, "classification", 0)
    assert model.output_shape == (None, 10)
    assert export_command.load_model("", official_checkpoint, "feature_vector", 0).output_shape == (
        None,
        2048,
    )
    with pytest.raises(bit_tf.CheckpointError, match="does not fit"):
        export_command.load_model("BiT-S-R50x1", official_checkpoint, "feature_vector", 0)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves an empty folder (every file is 404) and records the paths asked for."""

    requested: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        self.requested.append(self.path)
        super().do_GET()


def test_weights_default_to_the_released_weights_of_the_model(tmp_path):
    # A mirror without files: the run asks it for the weights, gets a 404 and says so in one
    # line; no network, no model built.
    (tmp_path / "mirror").mkdir()
    handler = functools.partial(_RecordingHandler, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}"
    environment = {
        **ENVIRONMENT,
        "BIT_TF_WEIGHTS_URL": mirror,
        "KERAS_HOME": str(tmp_path / "keras_home"),
    }
    try:
        completed = bit_export("--model=BiT-S-R101x1", cwd=tmp_path, environment=environment)
    finally:
        server.shutdown()
        server.server_close()
    error = one_line_error(completed)
    assert _RecordingHandler.requested == ["/BiT-S-R101x1.npz"]
    assert f"Could not download {mirror}/BiT-S-R101x1.npz" in error
    assert not (tmp_path / "exports").exists()


def test_serving_image_size_is_the_hyperrules_crop():
    rule = bit_tf.finetune.hyperrule.get_resolution
    assert hyperrule_image_size() == rule((500, 375))[1]
    assert hyperrule_image_size("BiT-M-R152x4") == rule((500, 375), "BiT-M-R152x4")[1]
    assert hyperrule_image_size("BiT-M-R50x1", large_images=False) == rule((32, 32))[1]
    # The flag's help quotes the same numbers.
    help_text = export_command.FLAGS["image_size"].help
    assert f"else {rule((500, 375))[1]}, or {rule((500, 375), 'R152x4')[1]} for R152x4" in help_text


def test_an_existing_serving_version_is_a_one_line_error_before_any_work(
    official_checkpoint, tmp_path
):
    # The README's serving section: export_serving(..., version=1) in Python, then the same
    # folder from the command line, whose --serving_version is 1 too.
    (tmp_path / "serving" / "1").mkdir(parents=True)
    completed = bit_export(
        f"--weights={official_checkpoint}",
        "--kind=classification",
        f"--export_dir={tmp_path / 'module'}",
        f"--serving_dir={tmp_path / 'serving'}",
        cwd=tmp_path,
    )
    error = one_line_error(completed)
    assert f"Serving version {tmp_path / 'serving' / '1'} already exists" in error
    assert "--serving_version" in error and "--overwrite" in error
    assert not (tmp_path / "module").exists()
