"""The bit-export command: a checkpoint in, a hub module, a serving model and an archive out."""

import os
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
from bit_cli import export as export_command

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPOSITORY}


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
            "--image_size=32",
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
