"""What a pre-training run shows while it runs: a log line and TensorBoard scalars.

`RunProgress` collects the sums that each `bit_tf.pretrain.loop` call returns, and at every
`log_every` steps (at the end of the loop that reaches them) writes:

- a log line: step, loss, top-1 (or precision@1 for multi-label data), learning rate, images
  per second and the estimated time left;
- TensorBoard scalars under `<logdir>/train` (when a `logdir` is given): `loss`, `top1` (or
  `precision_at_1`), `learning_rate`, `images_per_second` and `examples_seen`, at the global
  step (a resumed run goes on with the same curves);
- an entry of the run's history (what `summary.json` keeps).

Example:
    >>> progress = RunProgress(total_steps=1000, start_step=0, global_batch_size=4096,
    ...                        log_every=100, schedule=schedule, logdir="/ckpt/logs")
    >>> progress.add(sums)   # the dict one train_loop call returned
    >>> progress.log_if_due(step=100)
    INFO step 100/1000 loss 6.9021 top-1 0.0012 lr 0.04800 5120.3 images/s 0:16:40 left
"""

from __future__ import annotations

import logging
import os
import time

import tensorflow as tf

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS (days as "3d 4:05:06").

    Example:
        >>> format_duration(3725.4)
        '1:02:05'
    """
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {text}" if days else text


class RunProgress:
    """Adds up a run's loop results and logs them every `log_every` steps (see the module).

    Args:
        total_steps: the run's last step.
        start_step: the step it starts (or resumes) at.
        global_batch_size: images per step, over all replicas and workers.
        log_every: steps between log lines (a line comes at the end of the loop reaching them).
        schedule: the learning-rate schedule, called with a step.
        multi_label: name the metric precision@1 instead of top-1.
        logdir: a TensorBoard log folder; None for none (give it on the chief only).

    Example:
        >>> progress = RunProgress(1000, 0, 4096, 100, schedule, logdir="/ckpt/logs")
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        global_batch_size: int,
        log_every: int,
        schedule,
        multi_label: bool = False,
        logdir: str | None = None,
    ):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.log_every = log_every
        self.schedule = schedule
        self.metric_name = "precision@1" if multi_label else "top-1"
        self.history: list[dict] = []
        self._started = time.monotonic()
        self._window_started = self._started
        self._window_start_step = start_step
        self._window = {"loss": 0.0, "hits": 0.0, "examples": 0.0, "steps": 0}
        self._writer = None
        if logdir:
            self._writer = tf.summary.create_file_writer(os.path.join(logdir, "train"))

    def add(self, sums: dict) -> None:
        """Adds the sums of one loop call ({"loss", "hits", "examples", "steps"}).

        Example:
            >>> progress.add({"loss": 13.8, "hits": 3.0, "examples": 64.0, "steps": 2})
        """
        for key in ("loss", "hits", "examples"):
            self._window[key] += float(sums[key])
        self._window["steps"] += int(sums["steps"])

    def log_if_due(self, step: int) -> dict | None:
        """Logs (and writes the scalars) when a multiple of `log_every` or the last step was
        reached since the last line; returns the history entry then, else None.

        Example:
            >>> progress.log_if_due(100)["images_per_second"]
            5120.3
        """
        steps = self._window["steps"]
        if not steps:
            return None
        crossed = step // self.log_every > self._window_start_step // self.log_every
        if not crossed and step < self.total_steps:
            return None
        now = time.monotonic()
        seconds = max(now - self._window_started, 1e-9)
        steps_per_second = steps / seconds
        entry = {
            "step": step,
            "loss": self._window["loss"] / steps,
            "metric": self._window["hits"] / max(self._window["examples"], 1.0),
            "learning_rate": float(self.schedule(step - 1)),
            "images_per_second": round(self._window["examples"] / seconds, 2),
            "seconds": round(now - self._started, 3),
        }
        self.history.append(entry)
        left = (self.total_steps - step) / steps_per_second
        log.info(
            "step %d/%d loss %.4f %s %.4f lr %.5f %.1f images/s %s left",
            step,
            self.total_steps,
            entry["loss"],
            self.metric_name,
            entry["metric"],
            entry["learning_rate"],
            entry["images_per_second"],
            format_duration(left),
        )
        self._write_scalars(step, entry)
        self._window = {"loss": 0.0, "hits": 0.0, "examples": 0.0, "steps": 0}
        self._window_started, self._window_start_step = now, step
        return entry

    def _write_scalars(self, step: int, entry: dict) -> None:
        if self._writer is None:
            return
        metric = "precision_at_1" if self.metric_name == "precision@1" else "top1"
        with self._writer.as_default(step=step):
            tf.summary.scalar("loss", entry["loss"])
            tf.summary.scalar(metric, entry["metric"])
            tf.summary.scalar("learning_rate", entry["learning_rate"])
            tf.summary.scalar("images_per_second", entry["images_per_second"])
            tf.summary.scalar("examples_seen", float(step * self.global_batch_size))
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer.

        Example:
            >>> progress.close()
        """
        if self._writer is not None:
            self._writer.close()
