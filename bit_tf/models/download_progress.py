"""A one-line progress display for downloads, drawn only on a terminal.

Checkpoints run to gigabytes (BiT-M-R152x4 is 3.7 GB), so a download shows how far it is: the
bytes received (of the total when the server says it), the rate and the time left, redrawn in
place with a carriage return, as `keras.utils.get_file` does. When the stream is not a terminal
(a log file, a pipe, a batch job) it writes nothing.

Example:
    >>> import sys
    >>> progress = DownloadProgress("BiT-M-R50x1.npz", total_bytes=102_000_000, stream=sys.stderr)
    >>> progress.update(1 << 20)
    >>> progress.close()
"""

from __future__ import annotations

import time
from typing import TextIO

#: Seconds between redraws, so that a fast download does not flood the terminal.
REDRAW_SECONDS = 0.1
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float) -> str:
    """`count` bytes in binary units, e.g. "97.8 MiB".

    Example:
        >>> format_bytes(3_700_000_000)
        '3.4 GiB'
    """
    for unit in _UNITS:
        if count < 1024 or unit == _UNITS[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    """A duration as "42 s", "3 min 05 s" or "1 h 02 min".

    Example:
        >>> format_seconds(185)
        '3 min 05 s'
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class DownloadProgress:
    """Shows "name: 45.2 MiB of 97.8 MiB (46%), 12.3 MiB/s, 4 s left" on a terminal.

    Args:
        name: what is downloaded, shown first.
        total_bytes: the announced size, or None when the server does not say it.
        stream: where to draw; nothing is drawn unless `stream.isatty()`.

    Example:
        >>> progress = DownloadProgress("weights.npz", None, sys.stderr)
        >>> for chunk in chunks:
        ...     progress.update(len(chunk))
        >>> progress.close()
    """

    def __init__(self, name: str, total_bytes: int | None, stream: TextIO | None):
        self.name = name
        self.total_bytes = total_bytes
        self.received = 0
        self.stream = stream
        self.enabled = _is_terminal(stream)
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, count: int) -> None:
        """Adds `count` received bytes and redraws the line if it is time to."""
        self.received += count
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= REDRAW_SECONDS:
            self._drawn_at = now
            self._draw(now)

    def close(self) -> None:
        """Draws the final line and ends it."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The progress line as it stands."""
        elapsed = max((time.monotonic() if now is None else now) - self._started, 1e-6)
        rate = self.received / elapsed
        parts = [f"{self.name}: {format_bytes(self.received)}"]
        if self.total_bytes:
            percent = 100 * self.received / self.total_bytes
            parts[0] += f" of {format_bytes(self.total_bytes)} ({percent:.0f}%)"
        parts.append(f"{format_bytes(rate)}/s")
        if self.total_bytes and rate > 0:
            remaining = max(self.total_bytes - self.received, 0) / rate
            parts.append(f"{format_seconds(remaining)} left")
        return ", ".join(parts)

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\033[K")
        self.stream.flush()


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


__all__ = ["DownloadProgress", "format_bytes", "format_seconds"]
