"""BatchNorm vs GroupNorm, with and without Weight Standardization, across batch sizes.

A laptop-scale rerun of the evidence behind BiT's choice of GroupNorm + Weight Standardization
(Wu & He, 2018, "GN better than BN?"; Qiao et al., 2019), plus Santurkar et al.'s (2018) noisy
BatchNorm next to plain BatchNorm. A small ResNetV2 from `bit_tf.resnet_v2` is trained from
scratch at 32x32 on scikit-learn's handwritten digits (offline, 1,437 training and 360 test
images) for the same number of epochs at every per-device batch size, with the learning rate
scaled linearly with the batch (Goyal et al.), and the test error is recorded.

    python examples/normalization_ablation.py           # about 13.5 minutes on 2 CPU cores
    python examples/normalization_ablation.py --quick   # under a minute, for CI
    python examples/normalization_ablation.py --batch_sizes=2,16 --epochs=6 --model=BiT-S-R18x1

Writes `normalization_ablation.md` (table) and `normalization_ablation.png` (test error against
batch size, one line per normalization) into --output_dir.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

# name -> (normalization, weight standardization)
CONFIGS = {
    "BN": ("batch", False),
    "GN": ("group", False),
    "BN+WS": ("batch", True),
    "GN+WS": ("group", True),
    "Noisy BN": ("noisy_batch", False),
}

flags.DEFINE_list("configs", list(CONFIGS), f"Normalizations to compare, from {list(CONFIGS)}.")
flags.DEFINE_list("batch_sizes", ["2", "8", "64"], "Per-device batch sizes.")
flags.DEFINE_integer("epochs", 2, "Training epochs (the same budget at every batch size).")
flags.DEFINE_float("base_lr", 0.1, "SGD learning rate at batch 64, scaled linearly with batch.")
flags.DEFINE_string(
    "model",
    "resnet10",
    "'resnet10' (bit_tf.resnet_v2 with one basic unit per block) or a registry name such as "
    "BiT-S-R18x1 (slower).",
)
flags.DEFINE_integer("train_examples", 0, "Use only this many training images; 0: all 1,437.")
flags.DEFINE_integer("seed", 0, "Seed of the data order, augmentation and initialisation.")
flags.DEFINE_string("output_dir", "normalization_ablation", "Where the table and plot go.")
flags.DEFINE_boolean(
    "quick",
    False,
    "A tiny run for CI: batch sizes 2 and 8, 8 training images, 1 epoch, 32 test images, "
    "eager execution (no graph tracing).",
)

IMAGE_SIZE = 32


def build_model(model_name: str, normalization: str, weight_standardization: bool):
    """A ResNetV2 for 32x32 digits with the given normalization."""
    import bit_tf

    options = {
        "num_classes": 10,
        "input_shape": (IMAGE_SIZE, IMAGE_SIZE, 3),
        "normalization": normalization,
        "weight_standardization": weight_standardization,
    }
    if model_name == "resnet10":
        return bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), unit="basic", **options)
    return bit_tf.create_model(model_name, **options)


def train_and_test(config: str, batch_size: int, train, test, steps: int, settings) -> dict:
    """Trains one model from scratch; returns its test error and the run's wall time."""
    import keras

    from bit_tf.data import pipelines as data

    keras.utils.set_random_seed(settings["seed"])
    normalization, weight_standardization = CONFIGS[config]
    model = build_model(settings["model"], normalization, weight_standardization)
    learning_rate = keras.optimizers.schedules.CosineDecay(
        settings["base_lr"] * batch_size / 64, decay_steps=steps
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        run_eagerly=settings["run_eagerly"],
    )
    batches = data.train_pipeline(
        train, batch_size, resize=IMAGE_SIZE + 4, crop=IMAGE_SIZE, seed=settings["seed"]
    )
    start = time.time()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    _, accuracy = model.evaluate(data.eval_pipeline(test, 128, IMAGE_SIZE), verbose=0)
    return {
        "config": config,
        "batch_size": batch_size,
        "steps": steps,
        "test_error": 100.0 * (1.0 - accuracy),
        "seconds": time.time() - start,
    }


def write_table(results: list, path: str, settings: dict) -> None:
    batch_sizes = sorted({row["batch_size"] for row in results}, reverse=True)
    configs = list(dict.fromkeys(row["config"] for row in results))
    error = {(row["config"], row["batch_size"]): row["test_error"] for row in results}
    lines = [
        "Test error (%) on 32x32 digits after the same number of epochs, by per-device batch "
        f"size (model {settings['model']}, {settings['epochs']} epoch(s), "
        f"{settings['train_examples']} training images, lr {settings['base_lr']} x batch / 64).",
        "",
        "| Normalization | " + " | ".join(f"batch {size}" for size in batch_sizes) + " |",
        "|---|" + "---:|" * len(batch_sizes),
    ]
    for config in configs:
        cells = [f"{error[(config, size)]:.1f}" for size in batch_sizes]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    total = sum(row["seconds"] for row in results)
    lines += ["", f"Training and testing took {total:.0f} s in all."]
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


def write_plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_sizes = sorted({row["batch_size"] for row in results}, reverse=True)
    figure, axes = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for config in dict.fromkeys(row["config"] for row in results):
        errors = [
            next(r["test_error"] for r in results if r["config"] == config and r["batch_size"] == b)
            for b in batch_sizes
        ]
        axes.plot(range(len(batch_sizes)), errors, marker="o", label=config)
    axes.set_xticks(range(len(batch_sizes)), [str(size) for size in batch_sizes])
    axes.set_xlabel("per-device batch size")
    axes.set_ylabel("test error (%)")
    axes.set_title("Digits 32x32: error vs. batch size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from bit_tf.data import pipelines as data

    unknown = [config for config in FLAGS.configs if config not in CONFIGS]
    if unknown:
        raise app.UsageError(f"Unknown --configs {unknown}; choose from {list(CONFIGS)}.")
    batch_sizes = [int(size) for size in FLAGS.batch_sizes]
    epochs, train_examples = FLAGS.epochs, FLAGS.train_examples
    if FLAGS.quick:
        batch_sizes, epochs, train_examples = [2, 8], 1, 8
    train, test = data.load_digits(validation_fraction=0.2, seed=FLAGS.seed)
    if train_examples:
        train = train.subset(range(min(train_examples, train.num_examples)))
    if FLAGS.quick:
        test = test.subset(range(32))
    settings = {
        "model": FLAGS.model,
        "epochs": epochs,
        "train_examples": train.num_examples,
        "base_lr": FLAGS.base_lr,
        "seed": FLAGS.seed,
        "run_eagerly": FLAGS.quick,
    }
    results = []
    for config in FLAGS.configs:
        for batch_size in batch_sizes:
            steps = max(1, epochs * train.num_examples // batch_size)
            row = train_and_test(config, batch_size, train, test, steps, settings)
            print(
                f"{config:9s} batch {batch_size:3d}: {steps:5d} steps, test error "
                f"{row['test_error']:5.1f}% ({row['seconds']:.0f} s)",
                flush=True,
            )
            results.append(row)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    table = os.path.join(FLAGS.output_dir, "normalization_ablation.md")
    plot = os.path.join(FLAGS.output_dir, "normalization_ablation.png")
    write_table(results, table, settings)
    write_plot(results, plot)
    print(open(table).read())
    print(f"Wrote {table} and {plot}")


if __name__ == "__main__":
    app.run(main)
