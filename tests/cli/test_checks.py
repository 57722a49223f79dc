"""The commands' --model check takes every name create_model takes: model names, the authors'
released names and timm's names of them; anything else ends the command in one line."""

import pytest

from bit_cli import checks


@pytest.mark.parametrize(
    "name",
    [
        "BiT-M-R50x1",
        "BiT-M-R50x1-ILSVRC2012",
        "resnetv2_50x1_bit.goog_in21k",
        "hf-hub:timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384",
    ],
)
def test_names_create_model_takes_pass(name):
    assert checks.model_name("bit-finetune", name) is None


def test_another_name_ends_the_command_naming_it(capsys):
    with pytest.raises(SystemExit) as ended:
        checks.model_name("bit-finetune", "resnetv2_50x1_bit.goog_in99k")
    assert ended.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "resnetv2_50x1_bit.goog_in99k" in error, error


def test_a_fraction_not_given_passes_and_one_out_of_range_is_named(capsys):
    from bit_cli.checks import between_zero_and_one

    assert between_zero_and_one("bit-finetune", validation_fraction=None) is None
    with pytest.raises(SystemExit) as ended:
        between_zero_and_one("bit-finetune", validation_fraction=1.5)
    assert ended.value.code == 2
    assert "--validation_fraction must be between 0 and 1, got 1.5" in capsys.readouterr().err
