"""bit-pretrain: upstream pre-training of a BiT backbone under tf.distribute.

Trains with the BiT upstream recipe (SGD momentum 0.9, weight decay 1e-4, batch 4096, 0.03 x
batch / 256 with 5000 warm-up steps and 10x decays), checkpoints every --checkpoint_every
steps and on SIGTERM/SIGINT, resumes from the latest checkpoint when started again with the same
settings (a --checkpoint_dir holding a run with other settings is refused, naming each
difference; --overwrite starts again there), and ends with the backbone as an official-layout
.npz and a TF-Hub feature-vector module.

Examples:
    # ILSVRC-2012 from TFDS on all GPUs of this host (BiT-S):
    bit-pretrain --model=BiT-S-R50x1 --dataset=imagenet2012 --data_dir=/data/tfds \\
        --strategy=mirrored --checkpoint_dir=/ckpt/bit-s-r50x1

    # Multi-label TFRecords (ImageNet-21k style), on a Cloud TPU VM, bfloat16:
    bit-pretrain --model=BiT-M-R50x1 --dataset='/data/i21k/train-*' --multi_label \\
        --num_classes=21843 --strategy=tpu --tpu=local --mixed_precision

    # Try the distributed path on a laptop: 2 logical CPU devices, a tiny run.
    bit-pretrain --model=BiT-S-R18x1 --dataset=/data/flowers --cpu_devices=2 \\
        --strategy=mirrored --global_batch_size=16 --image_size=64 --train_steps=50

Exit status: 0 when done; 128 + the signal number (143 for SIGTERM, 130 for SIGINT) when stopped
by a signal after writing a checkpoint (run the same command again to resume); 75 when another
worker of a multi-worker run was lost (start the same commands again on all workers to resume
from the last checkpoint); 2 for bad settings.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal

from absl import flags

from bit_cli import checks, common

FLAGS = flags.FLAGS
PROGRAM = "bit-pretrain"
#: Exit status when another worker was lost (sysexits' EX_TEMPFAIL: starting again can work).
EXIT_WORKER_LOST = 75

flags.DEFINE_string("model", "BiT-S-R50x1", "Model name, BiT-{S,M,L}-R{depth}x{width}.")
flags.DEFINE_string(
    "dataset",
    "imagenet2012",
    "A TFDS name (imagenet2012), a folder of class subfolders of images, or ImageNet-style "
    "TFRecord files (a file, a folder or a glob) with image/encoded and image/class/label.",
)
flags.DEFINE_string("data_dir", None, "TFDS data folder (for TFDS datasets).")
flags.DEFINE_string("split", "train", "TFDS split to train on.")
flags.DEFINE_integer(
    "num_classes", None, "Head size; default: class folders, or 1000/21843/18291 for S/M/L."
)
flags.DEFINE_boolean(
    "multi_label",
    False,
    "Labels are lists (multi-hot): sigmoid loss (head bias starting at -10) and precision@1.",
)
flags.DEFINE_integer("label_offset", 0, "Added to stored labels (-1 for ids starting at 1).")
flags.DEFINE_integer("num_examples", None, "Dataset size for the schedule; default: counted.")
flags.DEFINE_integer("global_batch_size", 4096, "Batch summed over all replicas and workers.")
flags.DEFINE_integer("epochs", None, "Epochs (default 90 for S/M, 40 for L); decays scale.")
flags.DEFINE_integer("train_steps", None, "Train this many steps (overrides --epochs).")
flags.DEFINE_integer("warmup_steps", 5000, "Linear learning-rate warm-up steps.")
flags.DEFINE_list(
    "decay_epochs",
    ["seed"],
    "When the rate drops 10x: 'seed' (the seed's table: BiT-L after epochs 23,30,37), 'paper' "
    "(the paper's text: BiT-L after 10,23,30,37), or epochs of the recipe's length, e.g. 30,60,80.",
)
flags.DEFINE_float(
    "base_learning_rate", None, "Peak learning rate; default 0.03 x global batch / 256."
)
flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay on convolution and dense kernels.")
flags.DEFINE_integer("image_size", 224, "Side of the square random crops.")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer (examples) per worker.")
flags.DEFINE_list(
    "units_per_block",
    [],
    "Units of the four blocks instead of the depth's (e.g. 1,1,1,1), as bottleneck units "
    "whatever the depth of --model (whose name the weights file keeps).",
)
flags.DEFINE_boolean("mixed_precision", False, "Compute in bfloat16 (TPUs, recent GPUs).")
flags.DEFINE_string("checkpoint_dir", "bit_pretrain", "Checkpoints, weights and summary.")
flags.DEFINE_boolean(
    "overwrite",
    False,
    "Start again in a --checkpoint_dir that holds a run with other settings, deleting its "
    "checkpoints (without it, such a run is refused and nothing is changed).",
)
flags.DEFINE_integer("checkpoint_every", 1000, "Write a checkpoint every this many steps.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
flags.DEFINE_integer(
    "log_every",
    100,
    "Log loss, metric, images/s and time left (and write TensorBoard scalars) every this many "
    "steps, at the end of the loop that reaches them.",
)
flags.DEFINE_integer(
    "steps_per_loop",
    None,
    "Training steps per tf.function call, read by the host once per call; a call also ends at "
    "each --checkpoint_every step. Default: 100 on GPUs and TPUs, 1 on CPUs.",
)
flags.DEFINE_string(
    "logdir",
    None,
    "TensorBoard log folder (scalars under <logdir>/train); default <checkpoint_dir>/logs; "
    "'' for none.",
)
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker", "tpu"],
    "default: one device; mirrored: all GPUs (or logical CPUs) of this host; multi_worker: "
    "hosts from TF_CONFIG; tpu: TPUStrategy via --tpu.",
)
flags.DEFINE_string("tpu", "local", "TPU for --strategy=tpu: 'local', a name or grpc:// address.")
flags.DEFINE_float(
    "heartbeat_timeout",
    None,
    "--strategy=multi_worker: seconds a worker may send no heartbeat (a hung host) before the "
    "others stop; default TensorFlow's 10. A killed worker is noticed at once.",
)
flags.DEFINE_integer(
    "cpu_devices", 0, "Split the CPU into this many logical devices (0: leave it whole)."
)
flags.DEFINE_string(
    "hub_export_dir",
    None,
    "Where to write the TF-Hub feature-vector module; default <checkpoint_dir>/hub_module; "
    "'' to skip.",
)


def _decay_epochs(values: list) -> str | tuple:
    if len(values) == 1 and values[0] in ("seed", "paper"):
        return values[0]
    try:
        epochs = tuple(int(value) for value in values)
    except ValueError:
        epochs = ()
    if not epochs or any(epoch <= 0 for epoch in epochs):
        common.fail(
            PROGRAM,
            f"--decay_epochs must be 'seed', 'paper' or positive whole epochs, got "
            f"{','.join(values)!r}.",
        )
    return epochs


def _units_per_block(values: list) -> tuple | None:
    if not values:
        return None
    try:
        units = tuple(int(value) for value in values)
    except ValueError:
        units = ()
    if len(units) != 4 or any(unit <= 0 for unit in units):
        common.fail(
            PROGRAM,
            f"--units_per_block must be four positive whole numbers, got {','.join(values)!r}.",
        )
    return units


def _check_dataset(dataset: str) -> None:
    """A local path (or glob) that names nothing ends the command; TFDS names and remote
    paths (gs://...) are checked when they are opened."""
    if not dataset:
        common.fail(PROGRAM, "--dataset is empty: give a TFDS name, an image folder or files.")
    if "://" in dataset:
        return
    if any(character in dataset for character in "*?["):
        if not glob.glob(dataset):
            common.fail(PROGRAM, f"--dataset={dataset!r}: no files match.")
        return
    looks_like_path = os.sep in dataset or dataset.startswith((".", "~"))
    if looks_like_path and not os.path.exists(os.path.expanduser(dataset)):
        common.fail(PROGRAM, f"--dataset={dataset!r}: no such file or folder.")


def _check_tf_config() -> None:
    value = os.environ.get("TF_CONFIG")
    if FLAGS.strategy != "multi_worker" or not value:
        return
    try:
        json.loads(value)
    except ValueError as error:
        common.fail(PROGRAM, f"TF_CONFIG is not valid JSON ({error}): {value!r}.")


def check_flags() -> None:
    """Ends the command with one line (status 2) on the first flag value that cannot work,
    before anything is written or TensorFlow starts."""
    checks.model_name(PROGRAM, FLAGS.model)
    checks.positive(
        PROGRAM,
        num_classes=FLAGS.num_classes,
        num_examples=FLAGS.num_examples,
        global_batch_size=FLAGS.global_batch_size,
        epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps,
        image_size=FLAGS.image_size,
        shuffle_buffer=FLAGS.shuffle_buffer,
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        log_every=FLAGS.log_every,
        steps_per_loop=FLAGS.steps_per_loop,
        heartbeat_timeout=FLAGS.heartbeat_timeout,
    )
    checks.not_negative(
        PROGRAM,
        warmup_steps=FLAGS.warmup_steps,
        base_learning_rate=FLAGS.base_learning_rate,
        weight_decay=FLAGS.weight_decay,
        cpu_devices=FLAGS.cpu_devices,
    )
    _decay_epochs(FLAGS.decay_epochs)
    _units_per_block(FLAGS.units_per_block)
    _check_dataset(FLAGS.dataset)
    if FLAGS.data_dir and "://" not in FLAGS.data_dir:
        checks.folder_to_read(PROGRAM, "data_dir", FLAGS.data_dir)
    if not FLAGS.checkpoint_dir:
        common.fail(PROGRAM, "--checkpoint_dir is empty: give the folder for checkpoints.")
    for flag in ("checkpoint_dir", "hub_export_dir", "logdir"):
        checks.folder_to_write(PROGRAM, flag, getattr(FLAGS, flag))
    _check_hub_export_dir()
    _check_tf_config()


def _check_hub_export_dir() -> None:
    """Ends the command if --hub_export_dir holds something that this run did not write: a
    new run (no checkpoint yet) cannot have exported a module there. Resumed runs replace the
    module their earlier session wrote; --overwrite replaces anything."""
    export_dir = FLAGS.hub_export_dir
    if not export_dir or "://" in export_dir or FLAGS.overwrite:
        return
    from bit_tf.pretrain.run_folder import checkpoint_files

    has_checkpoint = bool(checkpoint_files(FLAGS.checkpoint_dir))
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not has_checkpoint:
        common.fail(
            PROGRAM,
            f"--hub_export_dir={export_dir!r} already holds files, and --checkpoint_dir="
            f"{FLAGS.checkpoint_dir!r} holds no run that could have written them; choose "
            "another folder, or pass --overwrite to replace them.",
        )


def _logdir() -> str | None:
    if FLAGS.logdir is None:
        return os.path.join(FLAGS.checkpoint_dir, "logs")
    return FLAGS.logdir or None


def _config():
    from bit_tf.pretrain.recipe import PretrainConfig

    return PretrainConfig(
        model=FLAGS.model,
        dataset=FLAGS.dataset,
        checkpoint_dir=FLAGS.checkpoint_dir,
        data_dir=FLAGS.data_dir,
        split=FLAGS.split,
        num_classes=FLAGS.num_classes,
        multi_label=FLAGS.multi_label,
        label_offset=FLAGS.label_offset,
        num_examples=FLAGS.num_examples,
        global_batch_size=FLAGS.global_batch_size,
        epochs=FLAGS.epochs,
        train_steps=FLAGS.train_steps,
        warmup_steps=FLAGS.warmup_steps,
        decay_epochs=_decay_epochs(FLAGS.decay_epochs),
        base_learning_rate=FLAGS.base_learning_rate,
        weight_decay=FLAGS.weight_decay,
        image_size=FLAGS.image_size,
        shuffle_buffer=FLAGS.shuffle_buffer,
        units_per_block=_units_per_block(FLAGS.units_per_block),
        mixed_precision=FLAGS.mixed_precision,
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        log_every=FLAGS.log_every,
        steps_per_loop=FLAGS.steps_per_loop,
        logdir=_logdir(),
        seed=FLAGS.seed,
        strategy=FLAGS.strategy,
        tpu=FLAGS.tpu,
        heartbeat_timeout=FLAGS.heartbeat_timeout,
        overwrite=FLAGS.overwrite,
    )


def _export_hub(model, export_dir: str) -> None:
    from hub_export import export_module

    # A finished run started again re-exports the same weights, so replacing is safe.
    export_module(model, export_dir, kind="feature_vector", overwrite=True)
    logging.info("Wrote the TF-Hub feature-vector module to %s", export_dir)


def main(argv) -> int:
    del argv
    check_flags()
    logging.getLogger().setLevel(logging.INFO)
    from bit_tf.pretrain.data import DataError
    from bit_tf.pretrain.recipe import (
        StrategyError,
        TrainingInterruptedError,
        WorkerLost,
        configure_cpu_devices,
        pretrain,
    )
    from bit_tf.training.interruption import signals_deferred
    from bit_tf.training.run_lock import holding

    # One run per folder. Under multi_worker the library's chief holds it (the workers share it).
    folder = None if FLAGS.strategy == "multi_worker" else FLAGS.checkpoint_dir
    # Signals wait (training's own handler takes over while it runs): none may break a write.
    # Leaving at once after a stop: TensorFlow's runtime can wait long at interpreter shutdown
    # after an interrupted run or a lost worker (its coordination service waits for the others).
    with holding(folder, program=PROGRAM, flag="--checkpoint_dir"), signals_deferred() as deferred:
        try:
            if FLAGS.cpu_devices:
                configure_cpu_devices(FLAGS.cpu_devices)
            result = pretrain(_config())
        except TrainingInterruptedError as stop:
            common.leave(PROGRAM, str(stop), 128 + int(stop.signal_number))
        except WorkerLost as lost:
            common.leave(PROGRAM, str(lost), EXIT_WORKER_LOST)
        except (StrategyError, DataError, ValueError) as error:
            common.fail(PROGRAM, error)
        if result.is_chief:
            export_dir = FLAGS.hub_export_dir
            if export_dir is None:
                export_dir = os.path.join(FLAGS.checkpoint_dir, "hub_module")
            finished_before = result.step == result.resumed_from_step
            if export_dir and not (finished_before and os.path.isdir(export_dir)):
                _export_hub(result.model, export_dir)
            print(f"{PROGRAM}: done at step {result.step}; weights {result.weights_path}")
    if deferred.received is not None:
        name = signal.Signals(deferred.received).name
        message = f"stopped by {name} after the run's last files were written."
        common.leave(PROGRAM, message, 128 + deferred.received)
    return 0


def run() -> None:
    """Console-script entry point of `bit-pretrain`."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
