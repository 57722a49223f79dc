"""Fine-tuning a BiT model with `model.fit` under the BiT-HyperRule, resumable and fail-safe.

`finetune` replaces the head by a zero-initialised one for the task's classes, compiles SGD with
momentum 0.9 and the HyperRule schedule (`bit_tf.hyperrule`), and calls `model.fit` for the
HyperRule's number of steps, validating every `validation_every` steps. With a
`checkpoint_dir` it keeps `last.keras` (model and optimizer, written atomically at every
validation and when SIGTERM or SIGINT arrives) and `best.keras` (best validation accuracy);
running the same call again after an interruption resumes from `last.keras` and ends at the
same step count as an uninterrupted run. A NaN or infinite loss stops training with
`TrainingDivergedError` and leaves the last good checkpoint untouched.

Example:
    >>> import bit_tf
    >>> from bit_tf import data
    >>> train, validation = data.split(data.from_folder("flowers/"), 0.2)
    >>> model, history = bit_tf.finetune(
    ...     "BiT-M-R50x1", train, validation, weights="BiT-M-R50x1", batch_size=128,
    ...     checkpoint_dir="runs/flowers", logdir="runs/flowers/logs")
    >>> history.history["val_accuracy"][-1]
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import threading
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from bit_tf import data as data_lib
from bit_tf import hyperrule
from bit_tf.bit_model import BitModel
from bit_tf.models import create_model, resolve_dtype_policy
from bit_tf.optimizers import FusedMomentumSGD

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
PROGRESS_FILE = "progress.json"
#: How many validations a run makes by default.
VALIDATIONS_PER_RUN = 10


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterruptedError(Exception):
    """SIGTERM or SIGINT stopped fine-tuning after a checkpoint was written.

    Attributes:
        signal_number: the signal received (signal.SIGTERM or signal.SIGINT).
        step: the optimizer step the checkpoint holds.
        checkpoint: the path of the checkpoint; run the same call again to resume from it.
    """

    def __init__(self, signal_number: int, step: int, checkpoint: str):
        self.signal_number = signal_number
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        super().__init__(
            f"{name} received: stopped at step {step} after writing {checkpoint}. Run the same "
            "command again to resume from there."
        )


def _atomic_save(model: keras.Model, path: str) -> None:
    temporary = path[: -len(".keras")] + ".partial.keras"
    model.save(temporary)
    os.replace(temporary, path)


def _write_progress(checkpoint_dir: str, progress: dict) -> None:
    path = os.path.join(checkpoint_dir, PROGRESS_FILE)
    with open(path + ".partial", "w") as file:
        json.dump(progress, file, indent=1)
    os.replace(path + ".partial", path)


def _read_progress(checkpoint_dir: str) -> dict | None:
    path = os.path.join(checkpoint_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


class _Checkpointer(keras.callbacks.Callback):
    """Counts steps, guards against NaN, writes last/best checkpoints, honours signals."""

    def __init__(self, run):
        super().__init__()
        self.run = run
        self.micro_step = run["start_micro_step"]
        self.signal_number = None

    def _step(self) -> int:
        return self.micro_step // self.run["accumulation"]

    def _save_last(self, finished: bool = False) -> None:
        directory = self.run["checkpoint_dir"]
        if directory is None:
            return
        _atomic_save(self.model, os.path.join(directory, LAST_CHECKPOINT))
        progress = dict(self.run["progress"], step=self._step(), finished=finished)
        self.run["progress"] = progress
        _write_progress(directory, progress)

    def on_train_batch_end(self, batch, logs=None):
        self.micro_step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(np.asarray(loss))):
            self.model.stop_training = True
            progress = self.run["progress"]
            kept = (
                f"The last good checkpoint, {self.run['checkpoint_dir']}/{LAST_CHECKPOINT} "
                f"(step {progress['step']}), is left intact."
                if self.run["checkpoint_dir"] and progress.get("step")
                else "No checkpoint was written before it."
            )
            raise TrainingDivergedError(
                f"The training loss became {float(np.asarray(loss))} at step {self._step()} of "
                f"{self.run['total_steps']}; training stopped. {kept} Lower base_lr (now "
                f"{self.run['base_lr']}) or check the data for NaN or infinite values."
            )
        at_update = self.micro_step % self.run["accumulation"] == 0
        if self.run["signal"]["number"] is not None and at_update:
            self.signal_number = self.run["signal"]["number"]
            self._save_last()
            self.model.stop_training = True
            raise TrainingInterruptedError(
                self.signal_number,
                self._step(),
                os.path.join(self.run["checkpoint_dir"], LAST_CHECKPOINT),
            )

    def on_epoch_end(self, epoch, logs=None):
        if self.signal_number is not None:
            return
        finished = self._step() >= self.run["total_steps"]
        directory = self.run["checkpoint_dir"]
        accuracy = (logs or {}).get("val_accuracy")
        if directory is not None and accuracy is not None:
            best = self.run["progress"].get("best_val_accuracy")
            if best is None or float(accuracy) > best:
                _atomic_save(self.model, os.path.join(directory, BEST_CHECKPOINT))
                self.run["progress"] = dict(
                    self.run["progress"], best_val_accuracy=float(accuracy), best_step=self._step()
                )
        self._save_last(finished=finished)


def _model_policy(model: keras.Model) -> keras.DTypePolicy:
    """The dtype policy a model computes in: its stem convolution's, else its last layer's."""
    try:
        return model.get_layer("root_conv").dtype_policy
    except ValueError:
        return model.layers[-1].dtype_policy


def _with_new_head(model: keras.Model, num_classes: int) -> keras.Model:
    try:
        features = model.get_layer("pre_logits").output
    except ValueError:
        features = model.outputs[0]
        if len(features.shape) != 2:
            raise ValueError(
                f"Model {model.name!r} has no 'pre_logits' layer and its output has shape "
                f"{features.shape}, not (batch, features); pass a bit_tf model or a feature "
                "extractor whose output is a vector per image."
            ) from None
    # Float32 logits for a mixed-precision backbone (its variable dtype), as Keras advises.
    head = keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        name="head",
        dtype=_model_policy(model).variable_dtype,
    )(features)
    # A single input stays a single tensor (not a list), so `model(images)` matches its structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return BitModel(inputs, head, name=model.name)


def _as_source(value, name: str):
    if value is None or isinstance(value, data_lib.ImageSource | tf.data.Dataset):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        return data_lib.from_arrays(value[0], value[1], name=name)
    if isinstance(value, str | os.PathLike):
        if os.path.isdir(value):
            return data_lib.from_folder(value)
        return data_lib.from_tfds(str(value), split="train" if name == "train" else "test")
    raise TypeError(
        f"{name} must be a bit_tf.data.ImageSource, an (images, labels) pair, a folder path, "
        f"a TFDS name or a batched tf.data.Dataset, got {type(value).__name__}."
    )


def _segments(start: int, total: int, every: int) -> list[tuple[int, int, int]]:
    """Consecutive (first_epoch, epochs, steps_per_epoch) runs covering steps start..total."""
    epochs = []
    step = start
    while step < total:
        epoch = step // every
        end = min((epoch + 1) * every, total)
        epochs.append((epoch, end - step))
        step = end
    segments = []
    for epoch, length in epochs:
        if segments and segments[-1][2] == length and segments[-1][0] + segments[-1][1] == epoch:
            first, count, _ = segments[-1]
            segments[-1] = (first, count + 1, length)
        else:
            segments.append((epoch, 1, length))
    return segments


def resolve_resolution(
    train: data_lib.ImageSource, model_name: str, resize: int | None, crop: int | None
) -> tuple[int, int]:
    """The (resize, crop) `finetune` uses: given values, else the HyperRule's for the images.

    Example:
        >>> resolve_resolution(source_of_32x32_images, "BiT-M-R50x1", None, None)
        (160, 128)
    """
    default_resize, default_crop = hyperrule.get_resolution(train.image_size, model_name)
    resize = resize or (default_resize if crop is None else max(crop, default_resize))
    return resize, crop or min(default_crop, resize)


def finetune(
    model_or_name: str | keras.Model,
    train,
    validation=None,
    *,
    weights: str | None = None,
    batch_size: int = 512,
    steps: int | None = None,
    base_lr: float = hyperrule.BASE_LR,
    mixup_alpha: float | None = None,
    gradient_accumulation_steps: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    resize: int | None = None,
    crop: int | None = None,
    warmup_steps: int | None = None,
    validation_every: int | None = None,
    dataset_size: int | None = None,
    checkpoint_dir: str | None = None,
    logdir: str | None = None,
    seed: int | None = None,
    dtype: str | keras.DTypePolicy | None = None,
    jit_compile: bool | str = "auto",
    verbose: int | str = "auto",
) -> tuple[keras.Model, keras.callbacks.History]:
    """Fine-tunes a BiT model on a classification task with the BiT-HyperRule.

    Args:
        model_or_name: a model name such as "BiT-M-R50x1", or a Keras model from bit_tf (its
            head, if any, is replaced) or any model ending in a feature vector.
        train: a `bit_tf.data.ImageSource`, an (images, labels) pair, a class-folder path, a
            TFDS name, or a batched `tf.data.Dataset` of (images in [0, 1], one-hot labels)
            (then `dataset_size` or `steps` is needed).
        validation: the same kinds (None: no validation).
        weights: for a model name: a released checkpoint name, a path or a URL; None for
            random weights.
        batch_size: the global batch per optimizer update; the learning rate is `base_lr`
            scaled by `batch_size / 512`.
        steps: optimizer updates; None for the HyperRule's (500, 10k or 20k by dataset size).
        base_lr: the learning rate at batch 512 (HyperRule: 0.003).
        mixup_alpha: None for the HyperRule's (0 below 20k examples, 0.1 above).
        gradient_accumulation_steps: split each batch into this many micro-batches whose
            gradients are averaged before one update (same effective batch, less memory).
        strategy: a `tf.distribute` strategy (e.g. MirroredStrategy); the model is built (or
            cloned) in its scope, and `batch_size` is global.
        callbacks: more Keras callbacks for `model.fit`.
        resize, crop: image sizes; None for the HyperRule's from the train images' size.
        warmup_steps: linear warm-up; None for the HyperRule's, scaled to `steps`.
        validation_every: optimizer steps between validations (one Keras epoch each); None
            for 10 validations per run.
        dataset_size: training examples, only for a `tf.data.Dataset` train input.
        checkpoint_dir: where `last.keras`, `best.keras` and `progress.json` go; an
            unfinished run found there is resumed. None: no checkpoints, no signal handling.
        logdir: a TensorBoard log folder; None for none.
        seed: makes the input pipeline deterministic.
        dtype: for a model name, the Keras dtype policy to build it with: "mixed_bfloat16"
            computes in bfloat16 with float32 weights (1.4-1.5x faster steps on CPUs with AMX
            or AVX512-BF16, benchmarks/RESULTS.md); None for Keras' global policy. A model
            passed in keeps its own.
        jit_compile: passed to `model.compile` ("auto": XLA where supported).
        verbose: passed to `model.fit` (the Keras progress bar by default).

    Returns:
        (model, history): the fine-tuned `keras.Model` and the `History` of all fit calls.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite.
        TrainingInterruptedError: SIGTERM or SIGINT arrived (with a checkpoint_dir); the
            checkpoint is written, run the same call again to resume.

    Example:
        >>> model, history = bit_tf.finetune(
        ...     "BiT-M-R50x1", train, validation, weights="BiT-M-R50x1", batch_size=128,
        ...     gradient_accumulation_steps=4, checkpoint_dir="runs/pets")
    """
    train = _as_source(train, "train")
    validation = _as_source(validation, "validation")
    if train is None:
        raise ValueError("train is required.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    accumulation = int(gradient_accumulation_steps)
    if accumulation < 1 or batch_size % accumulation:
        raise ValueError(
            f"gradient_accumulation_steps={gradient_accumulation_steps!r} must be a positive "
            f"divisor of batch_size={batch_size}."
        )
    micro_batch = batch_size // accumulation
    if dtype is not None and not isinstance(model_or_name, str):
        raise ValueError(
            f"dtype={dtype!r} applies to a model name; build the model with "
            "bit_tf.create_model(..., dtype=...) instead."
        )
    policy = resolve_dtype_policy(dtype) if isinstance(model_or_name, str) else None
    clone_into_strategy = strategy is not None
    strategy = strategy or tf.distribute.get_strategy()
    if micro_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"The micro-batch {micro_batch} (batch_size / gradient_accumulation_steps) must be "
            f"divisible by the {strategy.num_replicas_in_sync} replicas of the strategy."
        )

    model_name = model_or_name if isinstance(model_or_name, str) else model_or_name.name
    if isinstance(train, data_lib.ImageSource):
        num_classes = train.num_classes
        dataset_size = train.num_examples
        if validation is not None and not isinstance(validation, tf.data.Dataset):
            if validation.num_classes != num_classes:
                raise ValueError(
                    f"train has {num_classes} classes but validation has "
                    f"{validation.num_classes}; they must be the same classification task."
                )
        resize, crop = resolve_resolution(train, model_name, resize, crop)
        if mixup_alpha is None:
            mixup_alpha = hyperrule.get_mixup(dataset_size)
        log.info(
            "Fine-tuning on %s: %d examples, %d classes, resize %d, crop %d, MixUp %s.",
            train.name,
            dataset_size,
            num_classes,
            resize,
            crop,
            mixup_alpha,
        )
        train_batches = data_lib.train_pipeline(
            train, micro_batch, resize, crop, mixup_alpha=mixup_alpha, seed=seed
        )
    else:
        num_classes = int(train.element_spec[1].shape[-1])
        if dataset_size is None and steps is None:
            raise ValueError(
                "A tf.data.Dataset train input needs dataset_size= (for the HyperRule) or steps=."
            )
        train_batches = train.repeat()
    if isinstance(validation, data_lib.ImageSource):
        if crop is None:
            raise ValueError("crop= is needed to evaluate an ImageSource next to a tf.data train.")
        validation_batches = data_lib.eval_pipeline(validation, micro_batch, crop)
    else:
        validation_batches = validation

    rule = hyperrule.get_schedule(dataset_size) if dataset_size else [100, 150, 300, 450, 500]
    total_steps = int(steps) if steps is not None else rule[-1]
    if warmup_steps is None:
        warmup_steps = round(total_steps * rule[0] / rule[-1])
    boundaries = hyperrule.schedule_from_total(total_steps, warmup_steps=int(warmup_steps))
    validation_every = int(validation_every or max(1, math.ceil(total_steps / VALIDATIONS_PER_RUN)))

    settings = {
        "model": model_name,
        "num_classes": num_classes,
        "batch_size": batch_size,
        "total_steps": total_steps,
        "boundaries": boundaries,
        "base_lr": base_lr,
        "gradient_accumulation_steps": accumulation,
        "dtype": (policy or _model_policy(model_or_name)).name,
    }
    progress = {"settings": settings, "step": 0, "finished": False}
    resumed = None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        found = _read_progress(checkpoint_dir)
        last_path = os.path.join(checkpoint_dir, LAST_CHECKPOINT)
        if found and not found.get("finished") and os.path.exists(last_path):
            if found.get("settings") != settings:
                raise ValueError(
                    f"{checkpoint_dir} holds an unfinished run with other settings "
                    f"({found.get('settings')}, now {settings}). Use another checkpoint_dir, "
                    "or delete it to start over."
                )
            resumed, progress = last_path, found

    with strategy.scope():
        if resumed:
            model = keras.saving.load_model(resumed)
            log.warning(
                "Resuming from %s at step %d of %d.", resumed, progress["step"], total_steps
            )
        else:
            if isinstance(model_or_name, str):
                backbone = create_model(
                    model_or_name, num_classes=None, weights=weights, dtype=policy
                )
            else:
                if weights is not None:
                    raise ValueError("weights= is for model names; load weights into the model.")
                backbone = model_or_name
                if clone_into_strategy:
                    backbone = keras.models.clone_model(model_or_name)
                    backbone.set_weights(model_or_name.get_weights())
            model = _with_new_head(backbone, num_classes)
            schedule = hyperrule.HyperRuleSchedule(
                batch_size=batch_size,
                base_lr=base_lr,
                boundaries=boundaries,
                gradient_accumulation_steps=accumulation,
            )
            optimizer = FusedMomentumSGD(
                learning_rate=schedule,
                momentum=0.9,
                gradient_accumulation_steps=accumulation if accumulation > 1 else None,
            )
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=jit_compile,
            )

    run = {
        "checkpoint_dir": checkpoint_dir,
        "progress": progress,
        "total_steps": total_steps,
        "accumulation": accumulation,
        "base_lr": base_lr,
        "start_micro_step": progress["step"] * accumulation,
        "signal": {"number": None},
    }
    checkpointer = _Checkpointer(run)
    all_callbacks = [checkpointer, *(callbacks or [])]
    if logdir:
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                f"logdir={logdir!r} asks for TensorBoard logs, but the tensorboard package is "
                "not installed: pip install tensorboard, or pass logdir=None."
            )
        all_callbacks.append(keras.callbacks.TensorBoard(logdir, update_freq="epoch"))

    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch, history.history = [], {}
    segments = _segments(progress["step"], total_steps, validation_every)
    with _signals_caught(run["signal"], enabled=checkpoint_dir is not None):
        for first_epoch, epochs, length in segments:
            segment = model.fit(
                train_batches,
                validation_data=validation_batches,
                initial_epoch=first_epoch,
                epochs=first_epoch + epochs,
                steps_per_epoch=length * accumulation,
                callbacks=all_callbacks,
                verbose=verbose,
                shuffle=False,
            )
            history.epoch.extend(segment.epoch)
            for key, values in segment.history.items():
                history.history.setdefault(key, []).extend(values)
    return model, history


class _signals_caught:  # noqa: N801 (used as a context manager, reads like a phrase)
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop; a second SIGINT
    interrupts at once."""

    def __init__(self, state: dict, enabled: bool):
        self.state = state
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous = {}

    def _handle(self, number, frame):
        if self.state["number"] is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.state["number"] = number
        log.warning(
            "%s received: writing a checkpoint at the next step, then stopping.",
            signal.Signals(number).name,
        )

    def __enter__(self):
        if self.enabled:
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False
