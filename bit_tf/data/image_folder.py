"""Reading a folder of images with one subfolder per class, robust to what real folders hold.

Before training, every file is checked without decoding its pixels: it must be a readable
regular file, PIL must recognise its header, declare at most `MAX_PIXELS` pixels, and a JPEG,
PNG or WebP must end where its format says it ends (`bit_tf.data.image_integrity`), which finds the
files cut short by an interrupted copy or download. Files that fail are skipped and reported.
A file that passes but fails to decode later (damaged inside) is skipped when the pipeline
meets it, reported once and counted in the same list (`SkippedFiles`), so a bad file never
stops training.

What photo tools and operating systems leave in folders (`@eaDir`, `__MACOSX`,
`$RECYCLE.BIN`, `System Volume Information`, `Thumbs.db`, hidden names such as `.DS_Store` or
`.thumbnails`; `METADATA_NAMES`) is neither a class nor an image, and is ignored.

Readable images in any mode (grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG) are converted to
RGB, with the EXIF orientation applied, so photos are upright as a photo viewer shows them.

Example:
    >>> from bit_tf.data import image_folder
    >>> scan = image_folder.scan_folder("flowers/")   # flowers/daisy/*.jpg, flowers/rose/*.png
    >>> scan.class_names, len(scan.paths), scan.skipped[:3]
    (('daisy', 'rose'), 1520, [('flowers/rose/x.jpg', 'truncated JPEG: no end-of-image marker')])
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import io
import logging
import os
import stat
import threading
import time
import warnings

import numpy as np
from PIL import Image, ImageOps

from bit_tf.data.image_integrity import truncation_problem

log = logging.getLogger(__name__)

#: Images declaring more pixels than this (width x height) are skipped as "too large".
#: 64 megapixels: a 8000 x 8000 photo passes; decompression bombs do not.
MAX_PIXELS = 64_000_000
#: How many skipped file names a report shows.
SHOWN_SKIPPED = 5
#: Folder and file names that photo tools, NAS systems and operating systems leave next to
#: photos; never a class, never an image (compared without case). Names starting with "."
#: (.DS_Store, .thumbnails, ._IMG_1.jpg, .Trashes, .@__thumb) are ignored as well.
METADATA_NAMES = frozenset(
    name.lower()
    for name in (
        "@eaDir",  # Synology thumbnails and metadata
        "@SynoResource",
        "@SynoEAStream",
        "#recycle",  # Synology recycle bin
        "@Recycle",  # QNAP recycle bin
        "@Recently-Snapshot",
        "__MACOSX",  # macOS resource forks in zip archives
        "$RECYCLE.BIN",  # Windows recycle bin
        "System Volume Information",
        "lost+found",
        "Thumbs.db",  # Windows thumbnail caches and folder settings
        "ehthumbs.db",
        "ehthumbs_vista.db",
        "desktop.ini",
        "Icon\r",  # macOS custom folder icon
    )
)


def is_metadata(name: str) -> bool:
    """Whether a folder or file `name` is left by a tool or system rather than a class or an
    image: hidden (starts with ".") or one of `METADATA_NAMES`.

    Example:
        >>> is_metadata("@eaDir"), is_metadata(".DS_Store"), is_metadata("cat")
        (True, True, False)
    """
    return name.startswith(".") or name.lower() in METADATA_NAMES


class ImageFolderError(ValueError):
    """The folder cannot be used for training: no classes, an empty class, one class only."""


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The readable images of a class folder and the files that were skipped.

    Attributes:
        root: the folder scanned.
        class_names: the subfolder names, sorted; a label is an index into them.
        paths: the readable image files.
        labels: their class indices (int32).
        skipped: (path, reason) for every file that was not used; files skipped during
            training are added to it.
        image_size: the median (height, width) of the readable images.
        file_bytes: the size of the readable image files, in bytes, all together.
    """

    root: str
    class_names: tuple
    paths: tuple
    labels: np.ndarray
    skipped: list
    image_size: tuple
    file_bytes: int = 0

    def report(self) -> str:
        """One line: how many images were used and how many files were skipped, with examples."""
        line = (
            f"Image folder {self.root!r}: {len(self.paths)} images in "
            f"{len(self.class_names)} classes"
        )
        if not self.skipped:
            return line + "; no files skipped."
        shown = "; ".join(
            f"{os.path.relpath(path, self.root)} ({reason})"
            for path, reason in self.skipped[:SHOWN_SKIPPED]
        )
        more = len(self.skipped) - SHOWN_SKIPPED
        return (
            line
            + f"; skipped {len(self.skipped)} unreadable file(s): {shown}"
            + (f"; and {more} more." if more > 0 else ".")
        )


def _open(source, max_pixels: int) -> Image.Image:
    """The PIL image of a path or a file object (header read only), refused when it declares
    more than `max_pixels` pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(
            f"too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    return image


def to_rgb_uint16(image: Image.Image) -> np.ndarray:
    """An opened PIL image as uint16 RGB, HxWx3, on a 0-65535 scale, whatever its mode.

    8-bit values v become v * 257, so that v * 257 / 65535 is exactly v / 255 in float32;
    16-bit images keep their values; float ("F") images are scaled from 0-255 and rounded.
    Alpha is dropped; palette, CMYK and grayscale images are converted to RGB; the EXIF
    orientation is applied. Half the bytes of float32, for the images in flight in a pipeline.

    Example:
        >>> to_rgb_uint16(Image.open("scan.png")).dtype
        dtype('uint16')
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32) / 255.0, nan=0.0)
        array = np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint16) * np.uint16(257)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An opened PIL image as float32 RGB in [0, 1], HxWx3, whatever its mode and bit depth.

    16-bit images keep their precision (divided by 65535); alpha is dropped; palette, CMYK and
    grayscale images are converted to RGB; the EXIF orientation is applied.

    Example:
        >>> to_rgb_array(Image.open("scan.png")).shape
        (480, 640, 3)
    """
    return to_rgb_uint16(image).astype(np.float32) / np.float32(65535.0)


def read_image(path: str | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Reads one image file as float32 RGB in [0, 1], HxWx3.

    Raises:
        ValueError: the file declares more than `max_pixels` pixels.
        OSError: the file is missing, not an image, truncated or corrupt.

    Example:
        >>> read_image("flowers/daisy/1.jpg").dtype
        dtype('float32')
    """
    path = path.decode() if isinstance(path, bytes) else path
    with _open(path, max_pixels) as image:
        image.load()
        return to_rgb_array(image)


def decode_for_pipeline(encoded: bytes, max_pixels: int, min_size: int = 0) -> np.ndarray:
    """Decodes a file's bytes for a pipeline: uint16 RGB (`to_rgb_uint16`), upright.

    With `min_size`, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, PIL's
    `Image.draft`, done in the DCT domain) where both sides stay at least `min_size`: less
    time and memory for a photo far larger than the size it is resized to next. Other
    formats, and JPEGs without room to reduce, are decoded whole.

    Raises:
        ValueError: too many pixels. OSError or another PIL error: bytes that do not decode.

    Example:
        >>> decode_for_pipeline(open("IMG_0001.jpg", "rb").read(), MAX_PIXELS, 448).shape
        (756, 1008, 3)
    """
    with _open(io.BytesIO(encoded), max_pixels) as image:
        if min_size and image.format == "JPEG":
            image.draft(None, (min_size, min_size))
        image.load()
        return to_rgb_uint16(image)


def _unreadable_reason(path: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError) and os.path.islink(path):
        return f"cannot be read: a symbolic link to {os.readlink(path)!r}, which does not exist"
    if isinstance(error, PermissionError):
        return "cannot be read: permission denied"
    return f"cannot be read: {error.strerror or error}"


def _check(path: str, max_pixels: int) -> tuple[tuple | None, int, str | None]:
    """((height, width), bytes, None) for a file that passes the checks; (None, 0, reason)
    otherwise. Reads the header and the end of the file only (`bit_tf.data.image_integrity`)."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            return None, 0, "not a regular file"
        if status.st_size == 0:
            return None, 0, "empty file (0 bytes)"
        with _open(path, max_pixels) as image:
            size, image_format = image.size, image.format
        problem = truncation_problem(path, image_format)
        if problem:
            return None, 0, problem
        return (size[1], size[0]), status.st_size, None
    except ValueError as error:
        return None, 0, str(error)
    except Image.DecompressionBombWarning as error:
        return None, 0, f"too large: {error}"
    except (FileNotFoundError, PermissionError) as error:
        return None, 0, _unreadable_reason(path, error)
    except Exception as error:  # PIL raises many types for bad files; all mean "unreadable"
        kind = "not an image" if "cannot identify" in str(error) else "truncated or corrupt"
        return None, 0, f"{kind}: {type(error).__name__}: {error}"


class SkippedFiles:
    """The files of a folder that could not be used, with why; thread-safe.

    `scan_folder` fills it with the files that fail its checks; a pipeline adds a file whose
    decoding fails (`record`), once, with a warning naming it. A pipeline that meets as many
    failures in a row as the folder has images stops with `ImageFolderError` instead of
    reading on for ever.

    Example:
        >>> skipped = SkippedFiles("photos", [], num_images=100)
        >>> skipped.record("photos/cat/7.jpg", "truncated or corrupt: ...")
        >>> skipped.entries
        [('photos/cat/7.jpg', 'truncated or corrupt: ...')]
    """

    def __init__(self, root: str, entries: list, num_images: int):
        self.root = root
        self.entries = entries
        self.num_images = num_images
        self._failures_in_a_row = 0
        self._lock = threading.Lock()

    def record(self, path: str, reason: str) -> None:
        """Counts a file whose image could not be used now; reports it the first time."""
        with self._lock:
            self._failures_in_a_row += 1
            if all(known != path for known, _ in self.entries):
                self.entries.append((path, reason))
                log.warning(
                    "Skipped %s: %s (%d file(s) of %r skipped so far).",
                    path,
                    reason,
                    len(self.entries),
                    self.root,
                )
            if self._failures_in_a_row >= self.num_images:
                raise ImageFolderError(
                    f"No image of {self.root!r} decoded in {self._failures_in_a_row} tries in "
                    "a row: every file fails to decode (each was reported as skipped). Fix or "
                    "remove them."
                )

    def decoded(self) -> None:
        """Notes that an image decoded."""
        self._failures_in_a_row = 0


class _PipelineCalls:
    """The decoding calls that tf.data's threads make into Python, and the interpreter's exit.

    A thread of TensorFlow that calls into Python while the interpreter finalizes never comes
    back, and an input pipeline destroyed then (an iterator alive at exit) waits for that call
    for ever. At exit (`atexit`, before finalizing), `drain` makes every later call return at
    once and waits until the calls in flight are done and no new one has started for a moment,
    so the pipelines are idle when finalizing destroys them.
    """

    QUIET_SECONDS = 0.3
    LONGEST_WAIT_SECONDS = 10.0

    def __init__(self):
        self.exiting = False
        self.active = 0
        self.last_change = time.monotonic()
        self.lock = threading.Lock()

    def enter(self) -> bool:
        """Counts a call in; False once the interpreter is exiting (answer at once then)."""
        with self.lock:
            self.active += 1
            self.last_change = time.monotonic()
        return not self.exiting

    def leave(self) -> None:
        with self.lock:
            self.active -= 1
            self.last_change = time.monotonic()

    def drain(self) -> None:
        self.exiting = True
        deadline = time.monotonic() + self.LONGEST_WAIT_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                idle = self.active == 0
                quiet = time.monotonic() - self.last_change > self.QUIET_SECONDS
            if idle and quiet:
                return
            time.sleep(0.02)


_PIPELINE_CALLS = _PipelineCalls()
atexit.register(_PIPELINE_CALLS.drain)


class FolderDecoder:
    """Decodes the images of a folder for a pipeline: path bytes -> (uint16 RGB, decoded).

    A file that cannot be read or decoded gives a 1x1 black image and False, and is recorded
    in `skipped` (`SkippedFiles`); `read` gives a file's bytes (a `bit_tf.data.encoded_cache`
    cache's `read`, or plain reading).

    Example:
        >>> decoder = FolderDecoder(SkippedFiles("photos", [], 100), MAX_PIXELS)
        >>> image, decoded = decoder(b"photos/cat/1.jpg", 448)
    """

    def __init__(self, skipped: SkippedFiles, max_pixels: int = MAX_PIXELS, read=None):
        self.skipped = skipped
        self.max_pixels = max_pixels
        self.read = read or _read_file

    def __call__(self, path: bytes, min_size: int = 0) -> tuple[np.ndarray, bool]:
        try:
            if not _PIPELINE_CALLS.enter():
                return np.zeros((1, 1, 3), np.uint16), True  # exiting: nobody reads it
            return self._decode(os.fsdecode(path), min_size)
        finally:
            _PIPELINE_CALLS.leave()

    def _decode(self, path: str, min_size: int) -> tuple[np.ndarray, bool]:
        try:
            image = decode_for_pipeline(self.read(path), self.max_pixels, int(min_size))
        except (FileNotFoundError, PermissionError) as error:
            reason = _unreadable_reason(path, error)
        except ValueError as error:
            reason = str(error)
        except Exception as error:  # PIL raises many types for bad files
            reason = f"truncated or corrupt: {type(error).__name__}: {error}"
        else:
            self.skipped.decoded()
            return image, True
        self.skipped.record(path, reason)
        return np.zeros((1, 1, 3), np.uint16), False


def _read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _walk_error(skipped: list):
    def record(error: OSError) -> None:
        skipped.append((error.filename, _unreadable_reason(error.filename, error)))

    return record


def _class_names(root: str) -> list[str]:
    """The class subfolders of `root`, sorted; an ImageFolderError where there are fewer than 2."""
    if not os.path.isdir(root):
        raise ImageFolderError(
            f"Image folder {root!r} does not exist or is not a folder; expected one "
            f"subfolder per class, e.g. {root}/cat/*.jpg and {root}/dog/*.jpg."
        )
    class_names = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not is_metadata(entry.name)
    )
    if len(class_names) < 2:
        raise ImageFolderError(
            f"Image folder {root!r} has {len(class_names)} class subfolder(s) "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least 2. Put the "
            "images of each class into its own subfolder."
        )
    return class_names


def _candidates(root: str, class_names: list[str], skipped: list) -> list[tuple[str, int]]:
    """(path, label) of every file under the class folders but metadata, in sorted order;
    folders that cannot be listed go to `skipped`."""
    candidates = []
    for label, class_name in enumerate(class_names):
        class_root = os.path.join(root, class_name)
        for folder, subfolders, files in os.walk(class_root, onerror=_walk_error(skipped)):
            subfolders[:] = sorted(name for name in subfolders if not is_metadata(name))
            for name in sorted(files):
                if not is_metadata(name):
                    candidates.append((os.path.join(folder, name), label))
    return candidates


def scan_folder(
    root: str | os.PathLike, max_pixels: int = MAX_PIXELS, workers: int | None = None
) -> FolderScan:
    """Lists and checks the images of `root/<class name>/*`, skipping what cannot be used.

    Metadata folders and files (`is_metadata`) and files directly in `root` are ignored. Every
    other file is checked without decoding its pixels (in `workers` threads): it must be
    readable, have an image header PIL recognises, at most `max_pixels` pixels and, for JPEG,
    PNG and WebP, its end (see the module's docstring). Dangling symbolic links, files without
    read permission and subfolders that cannot be listed are skipped and counted with the rest.

    Raises:
        ImageFolderError: `root` is missing or has fewer than 2 class subfolders, or a class has
            no readable image.

    Example:
        >>> scan = scan_folder("flowers/")
        >>> print(scan.report())
        Image folder 'flowers/': 1520 images in 5 classes; skipped 2 unreadable file(s): ...
    """
    root = os.fspath(root)
    class_names = _class_names(root)
    skipped: list = []
    candidates = _candidates(root, class_names, skipped)
    with concurrent.futures.ThreadPoolExecutor(workers or 2 * (os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda item: _check(item[0], max_pixels), candidates))

    paths, labels, sizes, file_bytes = [], [], [], 0
    for (path, label), (size, length, problem) in zip(candidates, results, strict=True):
        if problem is None:
            paths.append(path)
            labels.append(label)
            sizes.append(size)
            file_bytes += length
        else:
            skipped.append((path, problem))
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        raise ImageFolderError(
            f"Image folder {root!r}: class folder(s) {', '.join(repr(n) for n in empty)} have no "
            f"readable image ({len(skipped)} file(s) skipped in all). Add images or remove the "
            "empty folder."
        )
    scan = FolderScan(
        root=root,
        class_names=tuple(class_names),
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int32),
        skipped=skipped,
        image_size=tuple(int(v) for v in np.median(np.asarray(sizes), axis=0)),
        file_bytes=file_bytes,
    )
    if skipped:
        log.warning(scan.report())
    return scan
