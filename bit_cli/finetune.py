"""bit-finetune: fine-tune a BiT model on a dataset with the BiT-HyperRule, from the command line.

With no flags it runs offline: it fine-tunes a randomly initialised BiT-S-R26x1 on scikit-learn's
handwritten digits (1,797 8x8 images, 10 classes, 20% held out) with the HyperRule scaled down
for 2 CPU cores (see `DIGITS_DEFAULTS`), and writes the model to ./bit_finetune/model.keras.

    bit-finetune
    bit-finetune --dataset=oxford_flowers102 --weights=BiT-M-R50x1 --batch_size=128
    bit-finetune --dataset=/data/my_photos --weights=BiT-M-R50x1 --examples_per_class=10

A TFDS dataset is validated on a minival of its train split (`--validation_split` empty) and its
test split evaluated once at the end: `test accuracy: <number>` comes before the last line of
output, `final validation accuracy: <number>`. SIGTERM or SIGINT writes a checkpoint and exits
(status 128 + signal number); running the same command again resumes.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from bit_cli import checks, common, data_flags, datasets
from bit_cli.datasets import DIGITS

FLAGS = flags.FLAGS
DEFAULT_MODEL = "BiT-S-R26x1"
# The HyperRule scaled down for the embedded default on 2 CPU cores (each overridable by its
# flag): random initialisation needs a larger rate than fine-tuning a pretrained model.
DIGITS_DEFAULTS = {
    "batch_size": 32,
    "steps": 400,
    "base_lr": 0.4,
    "resize": 36,
    "crop": 32,
    "validation_every": 100,
}

flags.DEFINE_string(
    "model",
    None,
    "Model name, e.g. BiT-M-R50x1 (see bit_tf.list_models()); it must fit the --weights "
    "checkpoint. Default: the architecture read from the --weights checkpoint (a released name, "
    f"a .npz path or a URL), else {DEFAULT_MODEL}.",
)
flags.DEFINE_string(
    "weights",
    None,
    "Pretrained weights: a released name (BiT-M-R50x1), a path or http(s) URL of an "
    "official-layout .npz, timm's checkpoint (hf-hub:timm/resnetv2_50x1_bit.goog_in21k, a timm "
    "release name or a model.safetensors path), or a .keras file bit-finetune wrote (model.keras, "
    "checkpoints/last.keras or best.keras); its architecture is used unless --model is given. "
    "Default: random initialisation.",
)
flags.adopt_module_key_flags(data_flags)  # --dataset, its TFDS folders and splits
flags.DEFINE_float(
    "validation_fraction",
    None,
    "Fraction of every class held out for validation. Default: 0.2 for digits and folders, "
    "0.02 of a TFDS train split (the authors' CIFAR minival).",
)
flags.DEFINE_enum(
    "hyperrule",
    "lecture",
    ["lecture", "authors"],
    "lecture (448/384 crops for larger images, decays at 30/60/90%, lr scaled with the batch) "
    "or authors (their code: 512/480 crops, decays after 200/300/400 of 500, lr 0.003 at any "
    "batch).",
)
flags.DEFINE_enum(
    "eval_resize",
    "resize",
    ["resize", "short_side_crop"],
    "Validation images: resize (straight to the crop, the authors' BiT code) or "
    "short_side_crop (shorter side to the resize size, then the central crop, as big_vision).",
)
flags.DEFINE_integer(
    "examples_per_class", None, "Few-shot: train on exactly this many examples per class."
)
flags.DEFINE_integer(
    "batch_size",
    None,
    f"Global batch size. Default: 512 (HyperRule), {DIGITS_DEFAULTS['batch_size']} on digits.",
)
flags.DEFINE_float(
    "base_lr",
    None,
    "Learning rate at batch 512, scaled linearly with --batch_size. Default: 0.003 "
    f"(HyperRule), {DIGITS_DEFAULTS['base_lr']} on digits (random initialisation).",
)
flags.DEFINE_integer(
    "steps",
    None,
    "Optimizer steps. Default: the HyperRule's (500/10k/20k by dataset size), "
    f"{DIGITS_DEFAULTS['steps']} on digits.",
)
flags.DEFINE_integer("warmup_steps", None, "Warm-up steps. Default: the HyperRule's, scaled.")
flags.DEFINE_integer(
    "resize",
    None,
    f"Resize size. Default: the HyperRule's (160/448/512), {DIGITS_DEFAULTS['resize']} on digits.",
)
flags.DEFINE_integer(
    "crop",
    None,
    f"Random-crop size. Default: the HyperRule's (128/384/480), {DIGITS_DEFAULTS['crop']} on "
    "digits.",
)
flags.DEFINE_float(
    "mixup_alpha", None, "MixUp alpha. Default: the HyperRule's (0 below 20k examples, 0.1 above)."
)
flags.DEFINE_integer(
    "gradient_accumulation_steps",
    None,
    "Split each batch into this many micro-batches (same effective batch, less memory). "
    "Default: as many as the machine's memory needs, from an estimate for the model, batch, "
    "resolution and dtype (one log line says when a batch is split).",
)
flags.DEFINE_string(
    "cache",
    "auto",
    "Cache the encoded images (the files' bytes; decoded images never): auto (in memory when "
    "they fit 1 GiB), memory, none, or a folder on a local disk.",
)
flags.DEFINE_integer(
    "validation_every",
    None,
    f"Steps between validations. Default: a tenth of the run, {DIGITS_DEFAULTS['validation_every']}"
    " on digits.",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored"],
    "tf.distribute strategy: default (one device) or mirrored (all local GPUs or CPUs).",
)
flags.DEFINE_bool(
    "jit_compile", False, "Compile the training step with XLA (faster on GPUs, slower on CPUs)."
)
flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "mixed_bfloat16"],
    "Keras dtype policy of the model: mixed_bfloat16 computes in bfloat16 with float32 weights "
    "(faster on CPUs with AMX or AVX512-BF16, and on GPUs).",
)
flags.DEFINE_string("export_dir", "bit_finetune", "Folder for the fine-tuned model.keras.")
flags.DEFINE_string(
    "checkpoint_dir",
    None,
    "Folder for last.keras/best.keras; an unfinished run there is resumed. "
    "Default: <export_dir>/checkpoints.",
)
flags.DEFINE_string(
    "logdir",
    None,
    "TensorBoard log folder. Default: <export_dir>/logs if the tensorboard package is installed.",
)
flags.DEFINE_integer("seed", 0, "Seed of the validation split, few-shot draw and augmentation.")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Start again where --export_dir or --checkpoint_dir holds a run with other settings (or a "
    "model.keras of an unknown run), replacing it. Without it such a run is refused; a run with "
    "the same settings is resumed, or reported as finished.",
)


PROGRAM = "bit-finetune"


def _check_flags() -> None:
    """Ends the command with one line for a flag value that cannot work, before any work."""
    checks.positive(PROGRAM, resize=FLAGS.resize, examples_per_class=FLAGS.examples_per_class)
    if FLAGS.resize and FLAGS.crop and FLAGS.crop > FLAGS.resize:
        common.fail(
            PROGRAM, f"--crop={FLAGS.crop} must not be larger than --resize={FLAGS.resize}."
        )
    batch_size = FLAGS.batch_size or (
        DIGITS_DEFAULTS["batch_size"] if FLAGS.dataset == DIGITS else 512
    )
    checks.training_run(PROGRAM, FLAGS, batch_size)
    checks.model_name(PROGRAM, FLAGS.model)
    datasets.check(PROGRAM, FLAGS.dataset)
    common.refuse_unknown_model_file(PROGRAM, FLAGS.export_dir, _checkpoint_dir(), FLAGS.overwrite)


def _checkpoint_dir() -> str:
    return FLAGS.checkpoint_dir or os.path.join(FLAGS.export_dir, "checkpoints")


def _load_data():
    from bit_tf.data import pipelines as data

    train, validation, test = datasets.load(
        PROGRAM,
        FLAGS.dataset,
        FLAGS.validation_fraction,
        seed=FLAGS.seed,
        train_split=FLAGS.train_split,
        validation_split=FLAGS.validation_split,
        data_dir=FLAGS.data_dir,
        manual_dir=FLAGS.manual_dir,
        test_split=FLAGS.test_split,
    )
    if FLAGS.examples_per_class:
        train = data.few_shot(train, FLAGS.examples_per_class, seed=FLAGS.seed)
    return train, validation, test


def _backbone():
    """(model or model name, dtype for finetune, name for the HyperRule's resolution)."""
    if not FLAGS.weights:
        name = FLAGS.model or DEFAULT_MODEL
        return name, FLAGS.dtype, name
    # The architecture comes from the checkpoint unless --model names one (which must fit it).
    # ValueError here: an unknown --model name.
    with common.user_errors("bit-finetune", ValueError):
        model = common.build_model(FLAGS.model, FLAGS.weights, num_classes=None, dtype=FLAGS.dtype)
    # The architecture's name ("R152x4"), which the HyperRule's resolution looks for.
    from bit_tf.models.create import architecture_of

    return model, None, architecture_of(model)


def main(argv):
    del argv
    _check_flags()
    logging.getLogger("bit_tf").setLevel(logging.INFO)
    from bit_tf.training.run_lock import holding

    # One run per folder: a second run into this --export_dir is refused while this one runs.
    # A run refused before it wrote anything leaves no empty --export_dir behind.
    with common.folder_removed_if_left_empty(FLAGS.export_dir):
        with holding(FLAGS.export_dir, program=PROGRAM, flag="--export_dir"):
            _fine_tune_and_write()


def _fine_tune_and_write() -> None:
    import tensorflow as tf

    from bit_tf.finetune.recipe import finetune, resolve_resolution

    defaults = DIGITS_DEFAULTS if FLAGS.dataset == DIGITS else {}

    def setting(name, fallback=None):
        value = getattr(FLAGS, name)
        return value if value is not None else defaults.get(name, fallback)

    model_or_name, dtype, architecture = _backbone()
    # ValueError here: a folder without images or classes, too few examples for the split.
    with common.user_errors(PROGRAM, ValueError):
        train, validation, test = _load_data()
    print(f"train: {train}\nvalidation: {validation}" + (f"\ntest: {test}" if test else ""))
    resize, crop = resolve_resolution(
        train, architecture, setting("resize"), setting("crop"), FLAGS.hyperrule
    )
    strategy = tf.distribute.MirroredStrategy() if FLAGS.strategy == "mirrored" else None
    export_dir = FLAGS.export_dir
    os.makedirs(export_dir, exist_ok=True)
    checkpoint_dir = _checkpoint_dir()
    with common.training_ending(PROGRAM):
        model, history = finetune(
            model_or_name,
            train,
            validation,
            batch_size=setting("batch_size", 512),
            steps=setting("steps"),
            base_lr=setting("base_lr", 0.003),
            mixup_alpha=FLAGS.mixup_alpha,
            gradient_accumulation_steps=FLAGS.gradient_accumulation_steps or "auto",
            cache=FLAGS.cache,
            strategy=strategy,
            resize=resize,
            crop=crop,
            warmup_steps=FLAGS.warmup_steps,
            validation_every=setting("validation_every"),
            checkpoint_dir=checkpoint_dir,
            logdir=datasets.tensorboard_logdir(FLAGS.logdir, export_dir),
            seed=FLAGS.seed,
            dtype=dtype,
            jit_compile=FLAGS.jit_compile,
            verbose=2,
            overwrite=FLAGS.overwrite,
            hyperrule=FLAGS.hyperrule,
            eval_resize=FLAGS.eval_resize,
        )
    splits = {"validation": validation, "test": test}
    _evaluate_and_write(model, history, splits, setting("batch_size", 512), (resize, crop))


def _evaluate_and_write(model, history, splits: dict, batch_size: int, resolution) -> None:
    """Evaluates the fine-tuned `model` and writes it to model.keras (a finished run's whole
    model.keras is kept; a damaged one ends the command with the way out)."""
    from bit_tf.data import pipelines as data
    from bit_tf.training.atomic import write_through
    from bit_tf.training.segments import end_of_data_unreported

    path = os.path.join(FLAGS.export_dir, "model.keras")
    # Nothing trained: the checkpoints hold this run, finished earlier.
    already_finished = not history.epoch
    keep = already_finished and os.path.exists(path)
    if keep:
        common.check_model_file(PROGRAM, path, _checkpoint_dir())
    if already_finished:
        print(f"{_checkpoint_dir()} holds this run, already finished; nothing to train")
    # A signal now waits for model.keras: the checkpoints already say the run is finished.
    with common.signals_wait_for(PROGRAM, path), end_of_data_unreported():
        # The micro-batch of the run (gradient accumulation) bounds the evaluation's batch too.
        accumulation = getattr(model.optimizer, "gradient_accumulation_steps", None) or 1
        eval_batch = min(batch_size // accumulation, 256)
        short_side = resolution[0] if FLAGS.eval_resize == "short_side_crop" else None
        accuracies = {
            name: model.evaluate(
                data.eval_pipeline(split, eval_batch, resolution[1], short_side=short_side),
                return_dict=True,
                verbose=0,
            )["accuracy"]
            for name, split in splits.items()
            if split is not None
        }
        if not keep:
            write_through(path, model.save, suffix=".keras")
            print(f"wrote {path}")
    if "test" in accuracies:  # evaluated once, after training; never chosen on
        print(f"test accuracy: {accuracies['test']:.4f}")
    print(f"final validation accuracy: {accuracies['validation']:.4f}", flush=True)


def run():
    """The `bit-finetune` console script."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
