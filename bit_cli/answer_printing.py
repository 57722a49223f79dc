"""bit-predict's output as it goes: each batch's answers on stdout as soon as it is done, in
the order of the files, and a progress line on stderr when it is a terminal.

Example:
    >>> from bit_cli.predictors import load_classifier
    >>> print_answers(load_classifier("run/model.keras"), ["cat.jpg", "dog.png"], 3, False)
    file     rank  class  probability  name
    cat.jpg     1      0       0.9612  cat
    ...
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bit_cli.answers import format_json_line, table_header, table_rows, table_width
from bit_tf.models.download_progress import DownloadProgress, format_seconds


class FileProgress(DownloadProgress):
    """How far bit-predict is, drawn on stderr as `bit_tf.models.download_progress` draws a download
    (in place, on a terminal only): "bit-predict: 120 of 2,000 files (6%), 7.1 files/s,
    4 min 24 s left". `update` counts files.

    Example:
        >>> progress = FileProgress(2000, sys.stderr)
        >>> progress.update(16)
        >>> progress.close()
    """

    def __init__(self, total_files: int, stream: TextIO | None, name: str = "bit-predict"):
        super().__init__(name, total_files, stream)
        self.started = time.monotonic()

    def line(self, now: float | None = None) -> str:
        """The progress line as it stands."""
        elapsed = max((time.monotonic() if now is None else now) - self.started, 1e-6)
        done, total = self.received, self.total_bytes
        rate = done / elapsed
        parts = [f"{self.name}: {done:,} of {total:,} files ({100 * done / max(total, 1):.0f}%)"]
        parts.append(f"{rate:.1f} files/s")
        if rate > 0:
            parts.append(f"{format_seconds((total - done) / rate)} left")
        return ", ".join(parts)

    def clear(self) -> None:
        """Takes the line off the terminal, so that what is printed there next starts clean."""
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def redraw(self) -> None:
        """Draws the line now (after `clear`)."""
        if self.enabled:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def print_answers(classifier, paths: list[str], top_k: int, json_lines: bool) -> bool:
    """Prints the answers of `paths` on stdout batch by batch, in their order, with a progress
    line on a terminal's stderr; returns whether every file was answered (none had an error).

    Example:
        >>> print_answers(classifier, ["cat.jpg", "dog.png"], top_k=3, json_lines=True)
        True
    """
    progress = FileProgress(len(paths), sys.stderr)
    # Answers printed on the progress line's terminal go above it: the line is taken off first
    # and drawn again after them.
    shared_terminal = progress.enabled and _is_terminal(sys.stdout)
    width = table_width(paths)
    if not json_lines:
        print(table_header(width), flush=True)
    all_answered = True
    for answers in classifier.answer_batches(paths, top_k):
        if shared_terminal:
            progress.clear()
        for answer in answers:
            all_answered &= answer.error is None
            lines = [format_json_line(answer)] if json_lines else table_rows(answer, width)
            print("\n".join(lines))
        sys.stdout.flush()
        progress.update(len(answers))
        if shared_terminal:
            progress.redraw()
    progress.close()
    return all_answered
