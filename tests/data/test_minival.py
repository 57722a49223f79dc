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


def test_a_dataset_with_a_validation_split_of_its_own_validates_on_it(tmp_path):
    # A real TFDS dataset prepared here (TFDS's mock data carries no split metadata): train,
    # validation and test splits of 3 classes of 8x8 PNGs.
    tfds = pytest.importorskip("tensorflow_datasets")
    import numpy as np

    sizes = {"train": 30, "validation": 9, "test": 6}

    class TinyWithValidation(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return tfds.core.DatasetInfo(
                builder=self, features=features, supervised_keys=("image", "label")
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, count) for split, count in sizes.items()}

        def _generate_examples(self, split, count):
            rng = np.random.default_rng(len(split))
            for index in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                yield f"{split}{index}", {"image": pixels, "label": index % 3}

    TinyWithValidation(data_dir=str(tmp_path)).download_and_prepare()
    train, validation, test = minival.tfds_splits("tiny_with_validation", data_dir=str(tmp_path))
    assert (train.name, validation.name, test.name) == (
        "tiny_with_validation:train",
        "tiny_with_validation:validation",
        "tiny_with_validation:test",
    )
    assert (train.num_examples, validation.num_examples, test.num_examples) == (30, 9, 6)
    loaded = datasets.load("bit-finetune", "tiny_with_validation", None, data_dir=str(tmp_path))
    assert [source.name for source in loaded] == [train.name, validation.name, test.name]
    # A fraction given holds out that share of train instead.
    train, held_out, _ = minival.tfds_splits(
        "tiny_with_validation", data_dir=str(tmp_path), validation_fraction=0.2
    )
    assert (train.num_examples, held_out.num_examples) == (24, 6)
