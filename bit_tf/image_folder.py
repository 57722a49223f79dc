"""Reading a folder of images with one subfolder per class, robust to what scraped data holds.

Every file is opened and fully decoded once, before training, so that a corrupt, truncated,
zero-byte or non-image file can never stop training mid-epoch. Readable images in any mode
(grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG) are converted to RGB; files that cannot be
read, or that declare more than `MAX_PIXELS` pixels, are skipped and reported.

Example:
    >>> from bit_tf import image_folder
    >>> scan = image_folder.scan_folder("flowers/")   # flowers/daisy/*.jpg, flowers/rose/*.png
    >>> scan.class_names, len(scan.paths), scan.skipped[:3]
    (('daisy', 'rose'), 1520, [('flowers/rose/x.jpg', 'truncated or corrupt: ...')])
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

#: Images declaring more pixels than this (width x height) are skipped as "too large".
#: 64 megapixels: a 8000 x 8000 photo passes; decompression bombs do not.
MAX_PIXELS = 64_000_000
#: How many skipped file names a report shows.
SHOWN_SKIPPED = 5


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
        skipped: (path, reason) for every file that was not used.
        image_size: the median (height, width) of the readable images.
    """

    root: str
    class_names: tuple
    paths: tuple
    labels: np.ndarray
    skipped: list
    image_size: tuple

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


def _open(path: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(
            f"too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An opened PIL image as float32 RGB in [0, 1], HxWx3, whatever its mode and bit depth.

    16-bit images keep their precision (divided by 65535); alpha is dropped; palette, CMYK and
    grayscale images are converted to RGB; the EXIF orientation is applied.

    Example:
        >>> to_rgb_array(Image.open("scan.png")).shape
        (480, 640, 3)
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(array, 0.0, 1.0)[..., None], 3, axis=-1)
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32) / 255.0, nan=0.0)
        array = np.clip(array, 0.0, 1.0)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


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


def _check(path: str, max_pixels: int) -> tuple[str, tuple | None, str | None]:
    if os.path.getsize(path) == 0:
        return path, None, "empty file (0 bytes)"
    try:
        with _open(path, max_pixels) as image:
            image.load()
            size = image.size
            to_rgb_array(image)
        return path, (size[1], size[0]), None
    except ValueError as error:
        return path, None, str(error)
    except Image.DecompressionBombWarning as error:
        return path, None, f"too large: {error}"
    except Exception as error:  # PIL raises many types for bad files; all mean "unreadable"
        kind = "not an image" if "cannot identify" in str(error) else "truncated or corrupt"
        return path, None, f"{kind}: {type(error).__name__}: {error}"


def scan_folder(
    root: str | os.PathLike, max_pixels: int = MAX_PIXELS, workers: int | None = None
) -> FolderScan:
    """Lists and checks the images of `root/<class name>/*`, skipping what cannot be read.

    Hidden files and files directly in `root` are ignored. Every other file is decoded once
    (in `workers` threads) so that training never meets a bad file.

    Raises:
        ImageFolderError: `root` is missing or has fewer than 2 class subfolders, or a class has
            no readable image.

    Example:
        >>> scan = scan_folder("flowers/")
        >>> print(scan.report())
        Image folder 'flowers/': 1520 images in 5 classes; skipped 2 unreadable file(s): ...
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ImageFolderError(
            f"Image folder {root!r} does not exist or is not a folder; expected one "
            "subfolder per class, e.g. {root}/cat/*.jpg and {root}/dog/*.jpg."
        )
    class_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if len(class_names) < 2:
        raise ImageFolderError(
            f"Image folder {root!r} has {len(class_names)} class subfolder(s) "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least 2. Put the "
            "images of each class into its own subfolder."
        )
    candidates = []
    for label, class_name in enumerate(class_names):
        class_root = os.path.join(root, class_name)
        for folder, subfolders, files in os.walk(class_root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    candidates.append((os.path.join(folder, name), label))

    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda item: _check(item[0], max_pixels), candidates))

    paths, labels, sizes, skipped = [], [], [], []
    for (path, label), (_, size, problem) in zip(candidates, results, strict=True):
        if problem is None:
            paths.append(path)
            labels.append(label)
            sizes.append(size)
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
    )
    if skipped:
        log.warning(scan.report())
    return scan
