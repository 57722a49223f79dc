"""Distillation against training from labels, at the same step budget, on the embedded digits.

The teacher is the classifier `bit-finetune` writes with no flags (a BiT-S-R26x1 fine-tuned on
scikit-learn's handwritten digits, bit_finetune/model.keras); made here with the same settings
if the file is not there. The student, a randomly initialised BiT-S-R18x1, is trained twice for
each step budget on the same 80% of the digits:

- distilled from the teacher with `bit_tf.distill` (bit-distill's digits settings: consistent
  inception crops of at least half the image, MixUp 1.0, Adam, KL at temperature 1);
- fine-tuned from the labels alone with `bit_tf.finetune` (bit-finetune's digits settings:
  the BiT-HyperRule, SGD, random crops and flips).

Both are validated on the held-out 20% (the teacher never saw them either).

    python examples/distill.py                      # about half an hour on 2 CPU cores
    python examples/distill.py --quick              # a minute or two, for CI
    python examples/distill.py --budgets=200,800,1600 --teacher=runs/digits/model.keras

Writes `distill.md` (table) and `distill.png` (validation accuracy against steps) into
--output_dir.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "teacher",
    os.path.join("bit_finetune", "model.keras"),
    "The teacher .keras file; made with bit-finetune's digits settings if missing.",
)
flags.DEFINE_string("student", "BiT-S-R18x1", "The student's model name.")
flags.DEFINE_list("budgets", ["200", "400", "800"], "Step budgets, one pair of runs each.")
flags.DEFINE_integer("seed", 0, "Seed of the split, the augmentation and initialisation.")
flags.DEFINE_string("output_dir", "distill", "Where the table and plot go.")
flags.DEFINE_boolean(
    "quick",
    False,
    "A tiny run for CI: a small ResNetV2 teacher fine-tuned for 20 steps, budgets of 4 and 8 "
    "steps of batch 8 at 16x16, 64 validation images.",
)

# bit-finetune's and bit-distill's digits settings (bit_cli.finetune.DIGITS_DEFAULTS and
# bit_cli.distill.DIGITS_DEFAULTS), but for the step count.
FINETUNE = {"batch_size": 32, "base_lr": 0.4, "resize": 36, "crop": 32}
# bit-distill's digits defaults: the legacy recipe, scaled down for CPUs.
DISTILL = {"recipe": "legacy", "batch_size": 32, "base_lr": 0.001, "crop": 32, "min_crop_area": 0.5}
QUICK = {"batch_size": 8, "crop": 16}


def make_teacher(train, path: str, quick: bool):
    """bit-finetune's offline default (400 steps of BiT-S-R26x1), or a tiny one for --quick."""
    import bit_tf

    if quick:
        backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", num_classes=None)
        settings = {"steps": 20, "batch_size": 8, "base_lr": 0.4, "resize": 18, "crop": 16}
    else:
        backbone = "BiT-S-R26x1"
        settings = {**FINETUNE, "steps": 400}
    teacher, _ = bit_tf.finetune(
        backbone, train, jit_compile=False, verbose=0, seed=FLAGS.seed, **settings
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    teacher.save(path)
    return teacher


def evaluate(student, teacher, validation, crop: int) -> tuple[float, float, float]:
    """(student accuracy, teacher accuracy, agreement) on the validation images."""
    import numpy as np

    from bit_tf.data import pipelines as data

    truth, student_classes, teacher_classes = [], [], []
    for images, labels in data.eval_pipeline(validation, 128, crop):
        truth.append(np.argmax(labels, -1))
        student_classes.append(np.argmax(student.predict_on_batch(images), -1))
        teacher_classes.append(np.argmax(teacher.predict_on_batch(images), -1))
    truth, student_classes, teacher_classes = (
        np.concatenate(values) for values in (truth, student_classes, teacher_classes)
    )
    return (
        float(np.mean(student_classes == truth)),
        float(np.mean(teacher_classes == truth)),
        float(np.mean(student_classes == teacher_classes)),
    )


def run_budget(steps: int, teacher, train, validation, quick: bool) -> dict:
    """Both students for one step budget: {method: (accuracy, agreement, seconds)}."""
    import keras

    import bit_tf

    finetune_settings = {**FINETUNE, **QUICK, "resize": 18} if quick else FINETUNE
    distill_settings = {**DISTILL, **QUICK} if quick else DISTILL
    common = {"steps": steps, "jit_compile": False, "verbose": 0, "seed": FLAGS.seed}
    results = {}
    keras.utils.set_random_seed(FLAGS.seed)
    start = time.time()
    student, _ = bit_tf.finetune(FLAGS.student, train, **common, **finetune_settings)
    accuracy, _, agreement = evaluate(student, teacher, validation, finetune_settings["crop"])
    results["labels"] = (accuracy, agreement, time.time() - start)
    keras.utils.set_random_seed(FLAGS.seed)
    start = time.time()
    student, _ = bit_tf.distill(teacher, FLAGS.student, train, **common, **distill_settings)
    accuracy, _, agreement = evaluate(student, teacher, validation, distill_settings["crop"])
    results["distilled"] = (accuracy, agreement, time.time() - start)
    return results


def write_table(results: dict, teacher_accuracy: float, path: str, settings: dict) -> None:
    lines = [
        f"Validation accuracy (%) of a randomly initialised {settings['student']} on "
        f"{settings['validation']} held-out digits ({settings['train']} training images), "
        f"trained for the same number of steps of batch {settings['batch_size']} from the "
        f"labels (bit_tf.finetune) or distilled from the teacher (bit_tf.distill); the "
        f"teacher ({settings['teacher']}) has {100 * teacher_accuracy:.1f}%. Agreement: the "
        "share of validation images on which the student's top class is the teacher's.",
        "",
        "| Steps | From labels: accuracy (%) | Distilled: accuracy (%) | From labels: agreement "
        "(%) | Distilled: agreement (%) | Seconds (labels / distilled) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, pair in results.items():
        labels, distilled = pair["labels"], pair["distilled"]
        lines.append(
            f"| {steps} | {100 * labels[0]:.1f} | {100 * distilled[0]:.1f} | "
            f"{100 * labels[1]:.1f} | {100 * distilled[1]:.1f} | "
            f"{labels[2]:.0f} / {distilled[2]:.0f} |"
        )
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


def write_plot(results: dict, teacher_accuracy: float, path: str, student: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(results)
    figure, axes = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for method, label in (("labels", "from labels"), ("distilled", "distilled")):
        accuracies = [100 * results[steps][method][0] for steps in budgets]
        axes.plot(budgets, accuracies, marker="o", label=f"{student}, {label}")
    axes.axhline(100 * teacher_accuracy, color="gray", linestyle="--", label="teacher")
    axes.set_xscale("log")
    axes.set_xticks(budgets, [str(steps) for steps in budgets])
    axes.set_xlabel("training steps")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title("Digits: distillation vs. labels at the same budget")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras

    from bit_tf.data import pipelines as data

    budgets = [4, 8] if FLAGS.quick else sorted(int(steps) for steps in FLAGS.budgets)
    if any(steps < 1 for steps in budgets):
        raise app.UsageError(f"--budgets must be positive, got {budgets}.")
    train, validation = data.load_digits(0.2, seed=FLAGS.seed)
    teacher_path = FLAGS.teacher
    if FLAGS.quick:
        validation = validation.subset(range(64))
        teacher_path = os.path.join(FLAGS.output_dir, "quick_teacher", "model.keras")
    if os.path.exists(teacher_path) and not FLAGS.quick:
        teacher = keras.saving.load_model(teacher_path)
    else:
        print(f"making the teacher {teacher_path} (bit-finetune's digits settings)", flush=True)
        teacher = make_teacher(train, teacher_path, FLAGS.quick)
    crop = QUICK["crop"] if FLAGS.quick else DISTILL["crop"]
    teacher_accuracy = evaluate(teacher, teacher, validation, crop)[0]
    results = {}
    for steps in budgets:
        results[steps] = run_budget(steps, teacher, train, validation, FLAGS.quick)
        print(
            f"{steps} steps: from labels {100 * results[steps]['labels'][0]:.1f}%, distilled "
            f"{100 * results[steps]['distilled'][0]:.1f}% (teacher {100 * teacher_accuracy:.1f}%)",
            flush=True,
        )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    settings = {
        "student": FLAGS.student,
        "teacher": "a small ResNetV2, 20 steps" if FLAGS.quick else "BiT-S-R26x1, bit-finetune",
        "train": train.num_examples,
        "validation": validation.num_examples,
        "batch_size": QUICK["batch_size"] if FLAGS.quick else DISTILL["batch_size"],
    }
    table = os.path.join(FLAGS.output_dir, "distill.md")
    plot = os.path.join(FLAGS.output_dir, "distill.png")
    write_table(results, teacher_accuracy, table, settings)
    write_plot(results, teacher_accuracy, plot, FLAGS.student)
    print(open(table).read())
    print(f"Wrote {table} and {plot}")


if __name__ == "__main__":
    app.run(main)
