"""hub_export.publish: TF-Hub archives served over HTTP, atomic against SIGKILL, no overwrites."""

import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

import bit_tf
import hub_export

from numerics import SAME_MODEL_TOLERANCE, relative_error

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPOSITORY}


@pytest.fixture(scope="module")
def classifier(official_checkpoint):
    model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    return bit_tf.load_official_weights(model, official_checkpoint)


@pytest.fixture(scope="module")
def module_dir(classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("publish")
    return hub_export.export_module(classifier, str(folder / "module"), kind="classification")


def test_publish_writes_archive_and_card_and_refuses_to_overwrite(module_dir, tmp_path):
    target = str(tmp_path / "hub")
    archive = hub_export.publish(module_dir, target, "bit/test-r14x1", 1)
    assert archive == os.path.join(target, "bit", "test-r14x1", "1.tar.gz")
    with tarfile.open(archive) as opened:
        names = opened.getnames()
    assert "saved_model.pb" in names and "variables/variables.index" in names
    card = open(os.path.join(target, "bit", "test-r14x1", "1.md")).read()
    for section in ("## Architecture", "## Upstream data", "## Inputs and outputs"):
        assert section in card
    assert "## Fine-tuning" in card and "Apache-2.0" in card and "image-classification" in card
    assert "`[batch, 10]` float32 logits" in card
    # The card's recipe is the package's own HyperRule (448/384 crops, 100-step warm-up).
    resize, crop = bit_tf.finetune.hyperrule.get_resolution((224, 224))
    assert f"resize to {resize} and crop {crop}" in card
    assert f"warm-up of {bit_tf.finetune.hyperrule.get_schedule(1000)[0]} steps" in card

    modified = os.path.getmtime(archive)
    with pytest.raises(hub_export.TargetExistsError, match="refusing to overwrite"):
        hub_export.publish(module_dir, target, "bit/test-r14x1", 1)
    assert os.path.getmtime(archive) == modified
    hub_export.publish(module_dir, target, "bit/test-r14x1", 1, overwrite=True)
    hub_export.publish(module_dir, target, "bit/test-r14x1", 2)
    assert sorted(os.listdir(os.path.dirname(archive))) == ["1.md", "1.tar.gz", "2.md", "2.tar.gz"]
    with pytest.raises(ValueError, match="Invalid module name"):
        hub_export.publish(module_dir, target, "../escape", 1)
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        hub_export.publish(str(tmp_path), target, "bit/empty", 1)


def test_publish_to_a_gfile_url(module_dir):
    # ram:// is TensorFlow's in-memory file system: the same tf.io.gfile path as gs://.
    archive = hub_export.publish(module_dir, "ram://hub", "bit/in-memory", 1)
    assert archive == "ram://hub/bit/in-memory/1.tar.gz"
    assert tf.io.gfile.exists(archive) and tf.io.gfile.exists("ram://hub/bit/in-memory/1.md")
    listing = tf.io.gfile.listdir("ram://hub/bit/in-memory")
    assert sorted(listing) == ["1.md", "1.tar.gz"]
    with pytest.raises(hub_export.TargetExistsError):
        hub_export.publish(module_dir, "ram://hub", "bit/in-memory", 1)


KILLED_CHILD = textwrap.dedent(
    """
    import sys
    import bit_tf, hub_export
    action, source, target = sys.argv[1:4]
    if action == "publish":
        hub_export.publish(source, target, "bit/killed", 1)
    else:
        model = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
        bit_tf.load_official_weights(model, source)
        hub_export.export_module(model, target, kind="classification")
    print("finished")
    """
)


def kill_when_partial_appears(command, folder, timeout=240):
    """Starts `command`, waits for a '.partial-' entry in `folder`, then SIGKILLs it."""
    child = subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if os.path.isdir(folder) and any(".partial-" in n for n in os.listdir(folder)):
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=60)
                return child
            if child.poll() is not None:
                pytest.fail(f"The child ended (rc {child.returncode}) before it could be killed.")
            time.sleep(0.005)
        pytest.fail("No temporary file appeared in time.")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("action", ["publish", "export"])
def test_killed_half_way_leaves_nothing_at_the_target(
    action, module_dir, official_checkpoint, tmp_path
):
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD)
    if action == "publish":
        target, folder = str(tmp_path / "hub"), str(tmp_path / "hub" / "bit" / "killed")
        final = os.path.join(folder, "1.tar.gz")
        command = [sys.executable, str(script), "publish", module_dir, target]
    else:
        folder = str(tmp_path / "exports")
        final = os.path.join(folder, "module")
        command = [sys.executable, str(script), "export", official_checkpoint, final]
    child = kill_when_partial_appears(command, folder)
    assert child.returncode == -signal.SIGKILL
    assert not os.path.exists(final)
    # The next attempt is not blocked by the debris and produces a whole result.
    if action == "publish":
        hub_export.publish(module_dir, target, "bit/killed", 1)
        with tarfile.open(final) as archive:
            assert "saved_model.pb" in archive.getnames()
    else:
        assert [
            name for name in os.listdir(folder) if not name.startswith(".module.partial-")
        ] == []


FRESH_LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow_hub as hub
    import bit_tf
    url, images_path, output_path = sys.argv[1:4]
    images = np.load(images_path)
    outputs = hub.load(url)(images).numpy()
    rebuilt = bit_tf.from_hub(url)(images).numpy()
    np.savez(output_path, hub=outputs, rebuilt=rebuilt)
    """
)


def test_published_module_loads_over_http_in_a_fresh_process(module_dir, classifier, tmp_path):
    site = tmp_path / "site"
    hub_export.publish(module_dir, str(site), "bit/r14x1", 1)
    # Port 0: the server takes a free port itself and names it ("Serving HTTP on ... port N").
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=str(site),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        announced = server.stdout.readline()
        match = re.search(r" port (\d+) ", announced)
        if match is None:
            pytest.fail(f"The web server did not start: {announced!r}")
        port = int(match.group(1))
        images = np.random.default_rng(6).uniform(size=(2, 40, 28, 3)).astype("float32")
        np.save(tmp_path / "images.npy", images)
        (tmp_path / "loader.py").write_text(FRESH_LOADER)
        completed = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "loader.py"),
                f"http://127.0.0.1:{port}/bit/r14x1/1.tar.gz",
                str(tmp_path / "images.npy"),
                str(tmp_path / "outputs.npz"),
            ],
            env={**ENVIRONMENT, "TFHUB_CACHE_DIR": str(tmp_path / "tfhub_cache")},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected = classifier(images).numpy()
    with np.load(tmp_path / "outputs.npz") as outputs:
        for key in ("hub", "rebuilt"):
            assert relative_error(outputs[key], expected) < SAME_MODEL_TOLERANCE, key
    assert os.listdir(tmp_path / "tfhub_cache")  # tensorflow_hub downloaded and unpacked it
