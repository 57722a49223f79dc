"""MixUp (Zhang et al., 2018) against plain training, on a small task at laptop scale.

A small ResNetV2 from `bit_tf.resnet_v2` (GroupNorm + Weight Standardization, as BiT) is trained
from scratch at 32x32 on a subset of scikit-learn's handwritten digits (offline), once without
MixUp, once with the BiT-HyperRule's alpha = 0.1 and once with a larger alpha (1.0, Zhang et
al.'s choice for CIFAR). MixUp comes from `bit_tf.data.train_pipeline` (`bit_tf.data.mixup`):
each batch is mixed with a shuffled copy of itself with one lambda ~ Beta(alpha, alpha) per
batch, as the authors mix, images and one-hot labels alike. The test error is recorded after
every epoch.

    python examples/mixup.py            # a few minutes on 2 CPU cores
    python examples/mixup.py --quick    # under a minute, for CI
    python examples/mixup.py --alphas=0,0.1,0.4,1.0 --train_examples=1437 --epochs=20

Writes `mixup.md` (table) and `mixup.png` (test error per epoch, one line per alpha) into
--output_dir.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_list(
    "alphas", ["0", "0.1", "1.0"], "MixUp alphas; 0 is plain training, 0.1 the HyperRule's."
)
flags.DEFINE_integer("train_examples", 500, "Training images (a subset makes overfitting show).")
flags.DEFINE_integer("epochs", 12, "Training epochs.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_float("learning_rate", 0.05, "Peak SGD learning rate (cosine decay to 0).")
flags.DEFINE_integer("seed", 0, "Seed of the data order, augmentation, MixUp and initialisation.")
flags.DEFINE_string("output_dir", "mixup", "Where the table and plot go.")
flags.DEFINE_boolean(
    "quick",
    False,
    "A tiny run for CI: 32 training images, 2 epochs of 2 steps, 32 test images, eager "
    "execution (no graph tracing).",
)

IMAGE_SIZE = 32


def train_and_test(alpha: float, train, test, epochs: int, steps_per_epoch: int, settings):
    """Trains one model from scratch; returns the test error (%) after each epoch."""
    import keras

    import bit_tf
    from bit_tf.data import pipelines as data

    keras.utils.set_random_seed(settings["seed"])
    model = bit_tf.resnet_v2(
        units_per_block=(1, 1, 1, 1),
        unit="basic",
        num_classes=10,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    )
    learning_rate = keras.optimizers.schedules.CosineDecay(
        settings["learning_rate"], decay_steps=epochs * steps_per_epoch
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        run_eagerly=settings["run_eagerly"],
    )
    batches = data.train_pipeline(
        train,
        settings["batch_size"],
        resize=IMAGE_SIZE + 4,
        crop=IMAGE_SIZE,
        mixup_alpha=alpha,
        seed=settings["seed"],
    )
    history = model.fit(
        batches,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        validation_data=data.eval_pipeline(test, 128, IMAGE_SIZE),
        verbose=0,
    )
    return [100.0 * (1.0 - value) for value in history.history["val_accuracy"]]


def write_table(results: dict, seconds: dict, path: str, settings: dict) -> None:
    lines = [
        f"Test error (%) on 32x32 digits, {settings['train_examples']} training images, "
        f"{settings['epochs']} epochs of batch {settings['batch_size']}, ResNetV2 (GN+WS).",
        "",
        "| MixUp alpha | Final test error (%) | Best test error (%) | Seconds |",
        "|---:|---:|---:|---:|",
    ]
    for alpha, errors in results.items():
        name = "0 (no MixUp)" if alpha == 0 else f"{alpha:g}"
        lines.append(f"| {name} | {errors[-1]:.1f} | {min(errors):.1f} | {seconds[alpha]:.0f} |")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


def write_plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for alpha, errors in results.items():
        label = "no MixUp" if alpha == 0 else f"MixUp alpha={alpha:g}"
        axes.plot(range(1, len(errors) + 1), errors, marker=".", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test error (%)")
    axes.set_title("Digits 32x32: MixUp vs. plain training")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from bit_tf.data import pipelines as data

    alphas = [float(alpha) for alpha in FLAGS.alphas]
    if any(alpha < 0 for alpha in alphas):
        raise app.UsageError(f"--alphas must be >= 0, got {alphas}.")
    epochs, train_examples, batch_size = FLAGS.epochs, FLAGS.train_examples, FLAGS.batch_size
    if FLAGS.quick:
        epochs, train_examples, batch_size = 2, 32, 8
    train, test = data.load_digits(validation_fraction=0.2, seed=FLAGS.seed)
    if train_examples:
        train = data.split(train, 1.0 - train_examples / train.num_examples, seed=FLAGS.seed)[0]
    if FLAGS.quick:
        test = test.subset(range(32))
    steps_per_epoch = 2 if FLAGS.quick else max(1, train.num_examples // batch_size)
    settings = {
        "train_examples": train.num_examples,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": FLAGS.learning_rate,
        "seed": FLAGS.seed,
        "run_eagerly": FLAGS.quick,
    }
    results, seconds = {}, {}
    for alpha in alphas:
        start = time.time()
        results[alpha] = train_and_test(alpha, train, test, epochs, steps_per_epoch, settings)
        seconds[alpha] = time.time() - start
        print(
            f"alpha {alpha:g}: final test error {results[alpha][-1]:.1f}% ({seconds[alpha]:.0f} s)",
            flush=True,
        )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    table = os.path.join(FLAGS.output_dir, "mixup.md")
    plot = os.path.join(FLAGS.output_dir, "mixup.png")
    write_table(results, seconds, table, settings)
    write_plot(results, plot)
    print(open(table).read())
    print(f"Wrote {table} and {plot}")


if __name__ == "__main__":
    app.run(main)
