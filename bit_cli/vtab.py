"""bit-vtab: evaluate a backbone on VTAB-1k or few-shot transfer, as the BiT paper does.

    bit-vtab --model=BiT-M-R50x1 --weights=BiT-M-R50x1 --output_dir=runs/vtab
    bit-vtab --model=BiT-S-R50x1 --weights=BiT-S-R50x1 --tasks=dtd,eurosat,clevr_count \\
        --batch_size=64 --steps=100 --resize=160 --crop=128 --max_test_examples=1000
    bit-vtab --mode=few_shot --dataset=oxford_iiit_pet --shots=1,5,10,25 --few_shot_runs=5 \\
        --model=BiT-M-R50x1 --weights=BiT-M-R50x1

VTAB mode fine-tunes a fresh copy of the backbone on each task with the BiT-HyperRule, --runs
times (3, as the paper), and writes `vtab_results.md` / `.json` (per task every run, the median
and the TFDS name and version read; the Natural / Specialized / Structured means and the overall
mean of the medians) into --output_dir. Few-shot mode writes `few_shot_results.md` /
`.json`. Results an earlier run left there are refused in one line before any work, unless
--overwrite. Datasets come from TensorFlow Datasets (downloaded on first use unless --nodownload);
the last line of output is the overall mean (VTAB) or the accuracy per number of shots.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

from bit_cli import checks, common, datasets

PROGRAM = "bit-vtab"
#: Few-shot mode on digits or a folder: the fraction of every class held out for testing.
FEW_SHOT_TEST_FRACTION = 0.2
FLAGS = flags.FLAGS

flags.DEFINE_enum("mode", "vtab", ["vtab", "few_shot"], "Run VTAB-1k or few-shot transfer.")
flags.DEFINE_string("model", "BiT-M-R50x1", "Model name (see bit_tf.list_models()).")
flags.DEFINE_string(
    "weights",
    None,
    "Backbone weights: a released name (BiT-M-R50x1), a .npz path or an http(s) URL, or a "
    ".keras file bit-finetune wrote (its architecture is used; --model, if given, must fit it). "
    "Default: the released weights of --model.",
)
flags.DEFINE_list(
    "tasks", [], "VTAB tasks to run (see bit_tf.evaluation.vtab.TASKS); empty: all 19."
)
flags.DEFINE_string(
    "dataset",
    "oxford_iiit_pet",
    "Few-shot mode: a TFDS image-classification dataset, a VTAB task name, 'digits' "
    "(scikit-learn's handwritten digits, offline) or a folder with one subfolder per class "
    "(for these two, a fifth of every class is held out for testing).",
)
flags.DEFINE_string("train_split", "train", "Few-shot mode, TFDS dataset: the split to draw from.")
flags.DEFINE_string("test_split", "test", "Few-shot mode, TFDS dataset: the split to test on.")
flags.DEFINE_list("shots", ["1", "5", "10", "25"], "Few-shot mode: examples per class.")
flags.DEFINE_integer(
    "few_shot_runs",
    5,
    "Few-shot mode: runs per shot count, seeds 0, 1, ...; the table gives min, median and max "
    "(the authors report at least five).",
)
flags.DEFINE_list(
    "seeds", [], "Few-shot mode: the seeds of the runs instead of --few_shot_runs, one per run."
)
flags.DEFINE_string("output_dir", "bit_vtab", "Where the results tables are written.")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace the results tables an earlier run left in --output_dir (vtab_results.md / .json, "
    "or few_shot_results.md / .json in few-shot mode). Without it such a folder is refused "
    "before any work.",
)
flags.DEFINE_string("data_dir", None, "TFDS data folder (default: ~/tensorflow_datasets).")
flags.DEFINE_boolean("download", True, "Let TFDS download and prepare missing datasets.")
flags.DEFINE_integer("batch_size", 512, "Global batch size (HyperRule: 512).")
flags.DEFINE_integer("steps", 0, "Optimizer steps per task; 0: the HyperRule's (500 for 1k).")
flags.DEFINE_integer("resize", 0, "Resize images to this square size; 0: the HyperRule's.")
flags.DEFINE_integer("crop", 0, "Random-crop size for training, resize for testing; 0: HyperRule.")
flags.DEFINE_float("base_lr", 0.003, "Learning rate at batch 512 (HyperRule: 0.003).")
flags.DEFINE_enum(
    "hyperrule",
    "lecture",
    ["lecture", "authors"],
    "lecture (448/384 crops for larger images, decays at 30/60/90%, lr scaled with the batch) "
    "or authors (their code: 512/480 crops, decays after 200/300/400 of 500, lr 0.003 at any "
    "batch).",
)
flags.DEFINE_integer(
    "gradient_accumulation_steps",
    0,
    "Split each batch into this many micro-batches (same effective batch, less memory); 0: as "
    "many as the machine's memory needs (one log line says when a batch is split).",
)
flags.DEFINE_integer(
    "max_test_examples", 0, "Score on the first N test examples only; 0: the full test split."
)
flags.DEFINE_boolean(
    "train_on_validation",
    True,
    "VTAB: train on train800 + val200 (as BiT does); false: train on train800 and also "
    "report val200 accuracy.",
)
flags.DEFINE_integer(
    "seed", 0, "Seed of the input pipeline (VTAB mode): run i of a task uses seed + i."
)
flags.DEFINE_integer(
    "runs", 3, "VTAB mode: runs per task; the table keeps every run and the median (paper: 3)."
)


def _optional(value: int):
    return value or None


def _integers(flag: str, smallest: int) -> list[int]:
    """The values of a list flag as integers of at least `smallest`, or one line and status 2."""
    values = getattr(FLAGS, flag)
    try:
        numbers = [int(value) for value in values]
    except ValueError:
        common.fail(PROGRAM, f"--{flag}={','.join(values)} must be a list of integers.")
    wrong = [number for number in numbers if number < smallest]
    if wrong or not numbers:
        common.fail(
            PROGRAM, f"--{flag}={','.join(values)}: each value must be at least {smallest}."
        )
    return numbers


def _check_flags() -> None:
    """Ends the command with one line for a flag value that cannot work, before any work."""
    checks.positive(
        PROGRAM,
        batch_size=FLAGS.batch_size,
        runs=FLAGS.runs,
    )
    checks.not_negative(
        PROGRAM,
        gradient_accumulation_steps=FLAGS.gradient_accumulation_steps,
        steps=FLAGS.steps,
        resize=FLAGS.resize,
        crop=FLAGS.crop,
        max_test_examples=FLAGS.max_test_examples,
        base_lr=FLAGS.base_lr,
    )
    checks.folder_to_write(PROGRAM, "output_dir", FLAGS.output_dir)
    if FLAGS.mode == "few_shot":
        _integers("shots", 1)
        if FLAGS.seeds:
            _integers("seeds", 0)
        checks.positive(PROGRAM, few_shot_runs=FLAGS.few_shot_runs)
        datasets.check(PROGRAM, FLAGS.dataset)
    from bit_tf.evaluation import vtab

    unknown = [name for name in FLAGS.tasks if name not in vtab.TASKS]
    if unknown:
        common.fail(
            PROGRAM,
            f"--tasks: unknown VTAB task(s) {', '.join(unknown)}; choose from "
            f"{', '.join(vtab.TASKS)}.",
        )
    if not _is_keras_file(FLAGS.weights) or FLAGS["model"].present:
        checks.model_name(PROGRAM, FLAGS.model)


def _is_keras_file(weights: str | None) -> bool:
    return bool(weights) and weights.endswith(".keras")


def _backbone_and_weights():
    """(the model argument of run_vtab / run_few_shot, its weights)."""
    weights = FLAGS.weights if FLAGS.weights is not None else FLAGS.model
    # A file (.keras, an official .npz, timm's .safetensors) gives its own architecture unless
    # --model is given, as in bit-finetune and bit-export; a released name gives --model's.
    if not (_is_keras_file(weights) or (FLAGS.weights and os.path.isfile(weights))):
        return FLAGS.model, weights or None
    model_name = FLAGS.model if FLAGS["model"].present else None
    # Read once here, so that a file that cannot serve ends the command before any work.
    common.build_model(model_name, weights, num_classes=None)
    return (lambda: common.build_model(model_name, weights, num_classes=None)), None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _check_flags()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bit_tf.evaluation import vtab

    # CheckpointError, DownloadError, TargetExistsError (user_error_types) and a dataset TFDS
    # cannot provide.
    with common.user_errors(PROGRAM, vtab.DatasetUnavailableError):
        _run()


def _run() -> None:
    from bit_tf.evaluation import vtab

    # Before any dataset is read or model built: a run takes hours.
    results_stem = vtab.VTAB_RESULTS if FLAGS.mode == "vtab" else vtab.FEW_SHOT_RESULTS
    vtab.refuse_existing_results(FLAGS.output_dir, results_stem, FLAGS.overwrite)
    model, weights = _backbone_and_weights()
    settings = {
        "weights": weights,
        "output_dir": FLAGS.output_dir,
        "overwrite": FLAGS.overwrite,
        "batch_size": FLAGS.batch_size,
        "steps": _optional(FLAGS.steps),
        "resize": _optional(FLAGS.resize),
        "crop": _optional(FLAGS.crop),
        "max_test_examples": _optional(FLAGS.max_test_examples),
        "base_lr": FLAGS.base_lr,
        "gradient_accumulation_steps": FLAGS.gradient_accumulation_steps or "auto",
        "hyperrule": FLAGS.hyperrule,
    }
    if FLAGS.mode == "vtab":
        results = vtab.run_vtab(
            model,
            FLAGS.tasks or None,
            data_dir=FLAGS.data_dir,
            download=FLAGS.download,
            train_on_validation=FLAGS.train_on_validation,
            seed=FLAGS.seed,
            runs=FLAGS.runs,
            **settings,
        )
        print(results.to_markdown())
        print(f"VTAB-1k overall mean accuracy: {results.means()['Overall']:.4f}")
        return
    train, test = _few_shot_splits()
    results = vtab.run_few_shot(
        model,
        train,
        test,
        shots=_integers("shots", 1),
        runs=FLAGS.few_shot_runs,
        seeds=_integers("seeds", 0) if FLAGS.seeds else None,
        **settings,
    )
    print(results.to_markdown())
    summary = ", ".join(f"{k}-shot {median:.4f}" for k, (_, median, _) in results.summary().items())
    print(f"few-shot median accuracy: {summary}")


def _few_shot_splits():
    """(train, test) of few-shot mode's --dataset: a VTAB task, the embedded digits or a folder
    (a `FEW_SHOT_TEST_FRACTION` of every class held out for testing), or a TFDS dataset."""
    from bit_tf.data import pipelines as data
    from bit_tf.evaluation import vtab

    if FLAGS.dataset in vtab.TASKS:
        splits = vtab.load_task(
            FLAGS.dataset, data_dir=FLAGS.data_dir, download=FLAGS.download, train_examples=None
        )
        return splits.train, splits.test
    if FLAGS.dataset == datasets.DIGITS or os.path.isdir(FLAGS.dataset):
        # ValueError here: a folder without images or classes.
        with common.user_errors(PROGRAM, ValueError):
            train, test, _ = datasets.load(
                PROGRAM, FLAGS.dataset, FEW_SHOT_TEST_FRACTION, seed=FLAGS.seed
            )
            return train, test
    import tensorflow_datasets as tfds

    try:
        return tuple(
            data.from_tfds(FLAGS.dataset, split, data_dir=FLAGS.data_dir, download=FLAGS.download)
            for split in (FLAGS.train_split, FLAGS.test_split)
        )
    except tfds.core.registered.DatasetNotFoundError:
        common.fail(
            PROGRAM,
            f"--dataset={FLAGS.dataset!r} is neither a VTAB task, '{datasets.DIGITS}', a folder "
            "here, nor a TFDS dataset name: give one of those (tfds.list_builders() lists the "
            "TFDS names).",
        )


def run() -> None:
    """Entry point of the `bit-vtab` console script."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
