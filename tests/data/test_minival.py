"""Validation never selects on the test set: a minival of the train split per class, the test
split kept for one evaluation at the end; validating on `test` stays possible, with a warning."""

import logging

import pytest

from bit_cli import datasets
from bit_tf.data import minival


def test_a_tfds_minival_is_held_out_of_train_and_the_test_split_kept_apart(tmp_path, caplog):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=100):
        train, held_out, test = minival.tfds_splits("mnist", data_dir=str(tmp_path))
        # 2% of every class, at least one image each; the test split untouched.
        assert (train.num_examples, held_out.num_examples, test.num_examples) == (90, 10, 100)
        assert set(train.indices).isdisjoint(held_out.indices)
        assert sorted(held_out.labels().tolist()) == list(range(10))
        assert test.name == "mnist:test"
        loaded = datasets.load("bit-finetune", "mnist", None, data_dir=str(tmp_path))
        assert [source.name for source in loaded] == [
            "mnist:train (train split)",
            "mnist:train (validation split)",
            "mnist:test",
        ]
        with caplog.at_level(logging.WARNING):
            train, validation, test = datasets.load(
                "bit-finetune", "mnist", None, data_dir=str(tmp_path), validation_split="test"
            )
        assert validation.name == "mnist:test" and test is None
        assert "best.keras is then chosen on the test set" in caplog.text
    assert minival.IMAGENET_SPLITS == ("train[:99%]", "train[99%:]", "validation")


def test_digits_and_folders_keep_their_held_out_fifth_and_have_no_test():
    train, validation, test = datasets.load("bit-finetune", "digits", None)
    assert test is None
    assert validation.num_examples == pytest.approx(0.2 * 1797, abs=10)
