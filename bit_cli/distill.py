"""bit-distill: distil a big classifier (the teacher) into a small BiT (the student).

The recipe of Beyer et al. (2022), `bit_tf.distill`: teacher and student see the same
aggressively augmented images, the student matches the teacher's softened outputs (KL
divergence at a temperature), Adam with warm-up and cosine decay, long schedules.

With no flags it runs offline on scikit-learn's handwritten digits: the teacher is the
./bit_finetune/model.keras that `bit-finetune` (no flags) writes, the student a randomly
initialised BiT-S-R18x1, with the recipe scaled down for 2 CPU cores (see `DIGITS_DEFAULTS`).
The student goes to ./bit_distill/model.keras.

    bit-finetune && bit-distill
    bit-distill --teacher=runs/pets/model.keras --student=BiT-S-R50x1 \
        --dataset=oxford_iiit_pet --recipe=pet --patience=fast

The last line of output is `final validation accuracy: X (teacher: Y, agreement: Z)`, after
`test accuracy: ...` where the data set has a test split (evaluated once, at the end).
SIGTERM or SIGINT writes a checkpoint and exits (status 128 + signal number); running the same
command again resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os

from absl import flags

from bit_cli import checks, common, data_flags, datasets
from bit_cli.datasets import DIGITS

FLAGS = flags.FLAGS
PROGRAM = "bit-distill"
DEFAULT_TEACHER = os.path.join("bit_finetune", "model.keras")
DEFAULT_STUDENT = "BiT-S-R18x1"
# The recipe scaled down for the embedded digits on 2 CPU cores (each overridable by its flag):
# 800 steps instead of thousands, and crops of at least half the image (8x8 digits upsampled to
# 32x32 keep little in a 5% crop) at a lower rate than the paper's.
DIGITS_DEFAULTS = {
    "recipe": "legacy",
    "batch_size": 32,
    "steps": 800,
    "crop": 32,
    "base_lr": 0.001,
    "min_crop_area": 0.5,
    "validation_every": 200,
}
PATIENCE = ("fast", "medium", "long")
# bit_tf.distill.recipes' RECIPE_CHOICES and VARIANTS, written here so that the flags need no
# TensorFlow (tests/cli/test_cli_distill.py checks they are the same).
RECIPE_CHOICES = ("auto", "flowers", "pet", "food", "sun", "imagenet", "size", "legacy")
VARIANTS = ("function_matching", "consistent", "independent", "fixed_teacher")

flags.DEFINE_string(
    "teacher",
    DEFAULT_TEACHER,
    "The teacher: a .keras classifier (bit-finetune's model.keras), or a released checkpoint "
    "name or official .npz with a head (BiT-M-R152x2-teacher-224). It must output the logits "
    "of the --dataset's classes.",
)
flags.DEFINE_string(
    "student",
    DEFAULT_STUDENT,
    "The student's model name, e.g. BiT-S-R18x1 or BiT-S-R50x1 (see bit_tf.list_models()).",
)
flags.DEFINE_string(
    "student_weights",
    None,
    "Weights to start the student from: a released name, a path or URL of an official .npz. "
    "Default: random initialisation, as in the paper.",
)
flags.adopt_module_key_flags(data_flags)  # --dataset, its TFDS folders and splits
flags.DEFINE_float(
    "validation_fraction",
    None,
    "Fraction of every class held out for validation. Default: 0.2 for digits and folders (with "
    "the same --seed as bit-finetune, the teacher never saw these images), 0.02 of a TFDS "
    "train split.",
)
flags.DEFINE_enum(
    "recipe",
    None,
    list(RECIPE_CHOICES),
    "The paper's settings (lr, weight decay, temperature, batch, crop, epochs, warm-up; each "
    "overridable by its flag): flowers, pet, food, sun or imagenet (big_vision's configs), size "
    "(the row for the training set's size: <=2k Flowers, <=20k Pet, <=500k Food, else "
    "ImageNet), legacy (lr 0.003, wd 3e-4, T 1, batch 512, HyperRule crop) or auto. Default: "
    "auto (by TFDS name, else size); legacy on digits.",
)
flags.DEFINE_enum(
    "variant",
    "function_matching",
    list(VARIANTS),
    "What the teacher sees: function_matching (same crop and MixUp), consistent (same crop), "
    "independent (a crop of its own) or fixed_teacher (outputs computed once on the "
    "unaugmented images).",
)
flags.DEFINE_integer(
    "teacher_crop",
    None,
    "The teacher's image size, when not the student's --crop (e.g. 384 for a 224 student): it "
    "sees the same crop at its own size.",
)
flags.DEFINE_enum(
    "eval_resize",
    "short_side_crop",
    ["short_side_crop", "resize"],
    "Validation images: short_side_crop (shorter side resized, central crop, as big_vision) or "
    "resize (straight to the crop).",
)
flags.DEFINE_integer(
    "batch_size",
    None,
    f"Global batch size. Default: the recipe's (512; 4096 on ImageNet), "
    f"{DIGITS_DEFAULTS['batch_size']} on digits.",
)
flags.DEFINE_integer(
    "steps",
    None,
    "Optimizer steps. Default: the recipe's --patience epochs on the training set, "
    f"{DIGITS_DEFAULTS['steps']} on digits.",
)
flags.DEFINE_enum(
    "patience",
    "medium",
    list(PATIENCE),
    "The recipe's schedule length when --steps is not given: fast, medium or long "
    "(e.g. 1,000 / 3,000 / 30,000 epochs on Pet).",
)
flags.DEFINE_float(
    "base_lr",
    None,
    f"Adam's peak learning rate. Default: the recipe's, {DIGITS_DEFAULTS['base_lr']} on digits.",
)
flags.DEFINE_float(
    "weight_decay", None, "Decoupled weight decay of the kernels (wd). Default: the recipe's."
)
flags.DEFINE_float(
    "temperature", None, "Softmax temperature of the distillation loss. Default: the recipe's."
)
flags.DEFINE_integer(
    "warmup_steps",
    None,
    "Warm-up steps. Default: the recipe's 1,500 (5,000 on ImageNet), at most 1/4 of the run.",
)
flags.DEFINE_integer(
    "crop",
    None,
    "The student's image size (and the teacher's, unless --teacher_crop). Default: the "
    f"recipe's (128; 224 on ImageNet; legacy: the HyperRule's), {DIGITS_DEFAULTS['crop']} on "
    "digits.",
)
flags.DEFINE_alias("student_crop", "crop")
flags.DEFINE_float("mixup_alpha", 1.0, "MixUp alpha (paper: 1.0); 0 for none.")
flags.DEFINE_float(
    "min_crop_area",
    None,
    "Smallest inception crop, as a fraction of the image. Default: 0.05 (paper), "
    f"{DIGITS_DEFAULTS['min_crop_area']} on digits.",
)
flags.DEFINE_float("clip_norm", 1.0, "Global gradient norm to clip to; 0 for no clipping.")
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
    "Steps between validations. Default: a tenth of the run, "
    f"{DIGITS_DEFAULTS['validation_every']} on digits.",
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
    "Keras dtype policy of the student: mixed_bfloat16 computes in bfloat16 with float32 weights.",
)
flags.DEFINE_string("export_dir", "bit_distill", "Folder for the distilled student's model.keras.")
flags.DEFINE_string(
    "checkpoint_dir",
    None,
    "Folder for last.keras/best.keras; a run with the same settings there is resumed. "
    "Default: <export_dir>/checkpoints.",
)
flags.DEFINE_string(
    "logdir",
    None,
    "TensorBoard log folder. Default: <export_dir>/logs if the tensorboard package is installed.",
)
flags.DEFINE_integer("seed", 0, "Seed of the validation split and of the augmentation.")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Start again where --checkpoint_dir holds a run with other settings, replacing it. Without "
    "it such a run is refused; a run with the same settings is resumed, or found finished.",
)


def _check_flags() -> None:
    """Ends the command with one line for a flag value that cannot work, before any work."""
    checks.positive(
        PROGRAM,
        teacher_crop=FLAGS.teacher_crop,
        temperature=FLAGS.temperature,
        min_crop_area=FLAGS.min_crop_area,
    )
    checks.not_negative(PROGRAM, weight_decay=FLAGS.weight_decay, clip_norm=FLAGS.clip_norm)
    if FLAGS.min_crop_area is not None and FLAGS.min_crop_area > 1:
        common.fail(PROGRAM, f"--min_crop_area must be at most 1, got {FLAGS.min_crop_area}.")
    batch_size = FLAGS.batch_size or (
        DIGITS_DEFAULTS["batch_size"] if FLAGS.dataset == DIGITS else 512
    )
    checks.training_run(PROGRAM, FLAGS, batch_size)
    checks.model_name(PROGRAM, FLAGS.student)
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join(FLAGS.export_dir, "checkpoints")
    common.refuse_unknown_model_file(PROGRAM, FLAGS.export_dir, checkpoint_dir, FLAGS.overwrite)
    if FLAGS.teacher == DEFAULT_TEACHER and not os.path.isfile(DEFAULT_TEACHER):
        common.fail(
            PROGRAM,
            f"--teacher={DEFAULT_TEACHER!r} (the default) does not exist: run bit-finetune "
            "first (it writes it), or give --teacher, a .keras classifier or a released name "
            "with a head.",
        )
    datasets.check(PROGRAM, FLAGS.dataset)


def _agreement(student, teacher, batches) -> tuple[float, float, float]:
    """(student accuracy, teacher accuracy, agreement) on the validation batches."""
    import numpy as np

    hits = teacher_hits = agreements = count = 0
    for images, labels in batches:
        truth = np.argmax(labels, axis=-1)
        # One batch for both, or {"student": ..., "teacher": ...} at two sizes.
        views = images if isinstance(images, dict) else {"student": images, "teacher": images}
        student_classes = np.argmax(student.predict_on_batch(views["student"]), axis=-1)
        teacher_classes = np.argmax(teacher.predict_on_batch(views["teacher"]), axis=-1)
        hits += int(np.sum(student_classes == truth))
        teacher_hits += int(np.sum(teacher_classes == truth))
        agreements += int(np.sum(student_classes == teacher_classes))
        count += len(truth)
    return hits / count, teacher_hits / count, agreements / count


def main(argv):
    del argv
    _check_flags()
    logging.getLogger("bit_tf").setLevel(logging.INFO)
    from bit_tf.training.run_lock import holding

    # One run per folder: a second run into this --export_dir is refused while this one runs.
    # A run refused before it wrote anything leaves no empty --export_dir behind.
    with common.folder_removed_if_left_empty(FLAGS.export_dir):
        with holding(FLAGS.export_dir, program=PROGRAM, flag="--export_dir"):
            _distill_and_write()


def _distill_and_write() -> None:
    """Reads the teacher and the data, distills (`bit_tf.distill`), then evaluates and writes
    the student to --export_dir/model.keras."""
    import tensorflow as tf

    from bit_tf.distill.recipe import distill

    strategy = tf.distribute.MirroredStrategy() if FLAGS.strategy == "mirrored" else None
    teacher, train, validation, test = _teacher_and_data(strategy)
    os.makedirs(FLAGS.export_dir, exist_ok=True)
    options = _distill_options(strategy)
    # ValueError here: a teacher of another number of classes, settings that do not fit an
    # unfinished run in the checkpoint folder.
    with common.training_ending(PROGRAM), common.user_errors(PROGRAM, ValueError):
        student, history = distill(teacher, FLAGS.student, train, validation, **options)
    splits = {"test": test, "validation": validation}
    _evaluate_and_write(student, teacher, splits, options["checkpoint_dir"], not history.epoch)


def _setting(name: str):
    """The value of flag `name`, else its default for the digits data set (else None)."""
    value = getattr(FLAGS, name)
    return (
        value
        if value is not None
        else (DIGITS_DEFAULTS if FLAGS.dataset == DIGITS else {}).get(name)
    )


def _teacher_and_data(strategy):
    """(teacher, train, validation, test) for the flags; a user's mistake ends the command."""
    # ValueError here: a checkpoint without a head, an unknown name.
    with common.user_errors(PROGRAM, ValueError):
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            teacher = common.build_model("", FLAGS.teacher)
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
    print(f"teacher: {teacher.name} ({teacher.count_params():,} parameters)")
    print(f"train: {train}\nvalidation: {validation}" + (f"\ntest: {test}" if test else ""))
    return teacher, train, validation, test


def _distill_options(strategy) -> dict:
    """The keyword arguments of `bit_tf.distill` that the flags give."""
    export_dir = FLAGS.export_dir
    names = ("batch_size", "steps", "crop", "base_lr", "min_crop_area", "validation_every")
    names += ("recipe", "temperature", "weight_decay", "teacher_crop")
    return {
        **{name: _setting(name) for name in names if _setting(name) is not None},
        "student_weights": FLAGS.student_weights or None,
        "dtype": FLAGS.dtype,
        "variant": FLAGS.variant,
        "eval_resize": FLAGS.eval_resize,
        "gradient_accumulation_steps": FLAGS.gradient_accumulation_steps or "auto",
        "cache": FLAGS.cache,
        "mixup_alpha": FLAGS.mixup_alpha,
        "seed": FLAGS.seed,
        "patience": FLAGS.patience,
        "warmup_steps": FLAGS.warmup_steps,
        "clip_norm": FLAGS.clip_norm or None,
        "strategy": strategy,
        "checkpoint_dir": FLAGS.checkpoint_dir or os.path.join(export_dir, "checkpoints"),
        "logdir": datasets.tensorboard_logdir(FLAGS.logdir, export_dir),
        "jit_compile": FLAGS.jit_compile,
        "verbose": 2,
        "overwrite": FLAGS.overwrite,
    }


def _evaluate_and_write(
    student, teacher, splits: dict, checkpoint_dir: str, already_finished: bool
) -> None:
    """Writes the student to model.keras and prints its accuracy, the teacher's and their
    agreement on the test split (once, never chosen on) and last on the validation split (a
    signal waits for the file: the checkpoints already say the run is finished)."""
    from bit_tf.distill.run_settings import evaluation_batches
    from bit_tf.training.atomic import write_through
    from bit_tf.training.checkpoints import read_progress

    path = os.path.join(FLAGS.export_dir, "model.keras")
    settings = read_progress(checkpoint_dir)["settings"]  # what the run used
    # Nothing trained: the checkpoints hold this run, finished earlier; its model.keras stays.
    keep = already_finished and os.path.exists(path)
    if keep:
        common.check_model_file(PROGRAM, path, checkpoint_dir)
    if already_finished:
        print(f"{checkpoint_dir} holds this run, already finished; nothing to train")
    with common.signals_wait_for(PROGRAM, path):
        results = {}
        for name, split in splits.items():
            if split is not None:
                batches = evaluation_batches(
                    split,
                    min(settings["batch_size"], 256),
                    settings["crop"],
                    settings["teacher_crop"],
                    settings["eval_resize"],
                )
                results[name] = _agreement(student, teacher, batches)
        if not keep:
            write_through(path, student.save, suffix=".keras")
            print(f"wrote {path}")
    for name, line in (("test", "test accuracy"), ("validation", "final validation accuracy")):
        if name in results:
            accuracy, teacher_accuracy, agreement = results[name]
            print(
                f"{line}: {accuracy:.4f} (teacher: {teacher_accuracy:.4f}, "
                f"agreement: {agreement:.4f})",
                flush=True,
            )


def run():
    """The `bit-distill` console script."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
