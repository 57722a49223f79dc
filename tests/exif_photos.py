"""Photos with an EXIF orientation, for the tests of every reader: the same upright photo stored
turned as a camera stores it, with the Orientation tag (either TIFF byte order) that turns it back.

Example:
    >>> data = stored_file(6)  # JPEG bytes: stored sideways, orientation 6
"""

import io
import struct

import numpy as np
from PIL import Image

# PIL's turn that makes the stored pixels of each orientation from the upright photo (the
# inverse of what exif_transpose applies).
TO_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_photo(height=48, width=64):
    """Blocks of 8x8 pixels of one colour each: every turn and flip of it is another image, and
    JPEG (at quality 100, without chroma subsampling) stores each turn of it alike, so that
    every orientation decodes to the same upright pixels."""
    colours = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3))
    return np.kron(colours, np.ones((8, 8, 1))).astype(np.uint8)


def tiff_block(value, big_endian=True, kind=3, magic=42, order=None, directory=8):
    """A TIFF header and a first directory of three entries, the orientation the second."""
    endian = ">" if big_endian else "<"
    order = order or (b"MM" if big_endian else b"II")
    if kind == 3:
        packed_value = struct.pack(endian + "HH", value, 0)
    else:
        packed_value = struct.pack(endian + "I", value)
    entries = [
        struct.pack(endian + "HHI", 0x0100, 4, 1) + struct.pack(endian + "I", 64),  # width
        struct.pack(endian + "HHI", 0x0112, kind, 1) + packed_value,
        struct.pack(endian + "HHI", 0x0128, 3, 1) + struct.pack(endian + "HH", 2, 0),
    ]
    header = order + struct.pack(endian + "HI", magic, directory)
    return header + struct.pack(endian + "H", len(entries)) + b"".join(entries) + b"\0" * 4


def encode(pixels, image_format, exif=None, **options):
    stream = io.BytesIO()
    extra = {} if exif is None else {"exif": b"Exif\0\0" + exif}
    Image.fromarray(pixels).save(stream, image_format, **extra, **options)
    return stream.getvalue()


def stored_file(value, image_format="JPEG", big_endian=True, photo=None):
    """The upright photo stored turned as a camera with orientation `value` stores it."""
    image = Image.fromarray(upright_photo() if photo is None else photo)
    if TO_STORED[value] is not None:
        image = image.transpose(TO_STORED[value])
    options = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}
    return encode(
        np.asarray(image),
        image_format,
        tiff_block(value, big_endian),
        **options.get(image_format, {}),
    )
