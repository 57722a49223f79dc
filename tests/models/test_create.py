"""`bit_tf.create_model(weights=...)` without a name (`bit_tf.models.from_checkpoint`): the
architecture and the head come from the file, an official `.npz` or a `.keras` file."""

import pytest

import bit_tf
from bit_tf.models.create import (
    ArchitectureMismatchError,
    HeadlessCheckpointError,
    HeadMismatchError,
    architecture_of,
    from_checkpoint,
)
from bit_tf.models.weights import CheckpointError

from numerics import PARITY_TOLERANCE, relative_error


def test_a_checkpoint_alone_gives_its_architecture_and_head_at_the_reference(
    official_checkpoint, reference_outputs
):
    model = bit_tf.create_model(weights=official_checkpoint)
    assert model.name == "bit_r14x1_official"
    assert model.output_shape == (None, 10)
    assert relative_error(model(reference_outputs["images"]), reference_outputs["logits"]) < (
        PARITY_TOLERANCE
    )
    features = bit_tf.create_model(weights=official_checkpoint, num_classes=None)
    assert relative_error(features(reference_outputs["images"]), reference_outputs["features"]) < (
        PARITY_TOLERANCE
    )


def test_a_keras_file_gives_itself_and_a_name_or_head_that_does_not_fit_is_refused(
    official_checkpoint, tmp_path
):
    path = str(tmp_path / "model.keras")
    bit_tf.create_model(weights=official_checkpoint).save(path)
    assert bit_tf.create_model(weights=path).output_shape == (None, 10)
    assert from_checkpoint(path, num_classes=None).output_shape == (None, 2048)
    with pytest.raises(HeadMismatchError, match="head of 10 classes, not 3"):
        from_checkpoint(path, num_classes=3)
    with pytest.raises(ArchitectureMismatchError, match=r"\(R26x1\) does not fit the model file"):
        from_checkpoint(path, name="BiT-S-R26x1")
    # With a name, create_model reads the .keras file as a whole model too.
    with pytest.raises(ArchitectureMismatchError, match=r"\(R26x1\) does not fit the model file"):
        bit_tf.create_model("BiT-S-R26x1", weights=path)
    model = bit_tf.create_model("BiT-S-R26x1")
    with pytest.raises(CheckpointError, match=r"load it whole with bit_tf.create_model\(weights="):
        bit_tf.load_official_weights(model, path)


def test_a_name_must_fit_the_checkpoint_and_a_headless_one_needs_a_head_size(
    official_checkpoint, tmp_path
):
    with pytest.raises(ArchitectureMismatchError) as caught:
        from_checkpoint(official_checkpoint, name="BiT-S-R26x1")
    error = caught.value
    assert (error.expected, error.kind) == ("R26x1", "checkpoint")
    assert error.words("--model=BiT-S-R26x1", "leave out --model").startswith(
        "--model=BiT-S-R26x1 (R26x1) does not fit the checkpoint"
    )
    headless = str(tmp_path / "headless.npz")
    bit_tf.save_official_weights(
        bit_tf.create_model(weights=official_checkpoint, num_classes=None), headless
    )
    with pytest.raises(HeadlessCheckpointError, match="has no head"):
        bit_tf.create_model(weights=headless)
    assert architecture_of(bit_tf.create_model(weights=headless, num_classes=4)) == (
        "ResNetV2 of bottleneck units (1, 1, 1, 1), width 1"
    )
    with pytest.raises(ValueError, match="needs a model name, weights"):
        bit_tf.create_model()
