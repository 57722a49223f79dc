"""bit_tf.orientation: the EXIF orientation of JPEG, PNG and WebP files, read and applied in
graph ops as PIL's ImageOps.exif_transpose (the training folder reader) applies it; damaged or
missing EXIF reads as stored; pre-training's random crop is taken on the upright photo."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from bit_tf import orientation
from bit_tf.image_bytes import jpeg_segments
from bit_tf.pretrain_augment import decode_and_crop

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
    """Smooth and lopsided: every turn and flip of it is another image."""
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns * 4, rows * 5, 250 - 2 * (rows + columns)], axis=-1)
    return np.clip(pixels, 0, 255).astype(np.uint8)


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


@tf.function
def read_upright(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return orientation.apply_orientation(image, orientation.exif_orientation(data))


def exif_transposed(data):
    """What the training folder reader sees: PIL's decoding, turned by exif_transpose."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_every_orientation_in_both_byte_orders_reads_as_pil_reads_it(image_format):
    upright = upright_photo().astype(int)
    for big_endian in (True, False):
        for value in range(1, 9):
            data = stored_file(value, image_format, big_endian)
            assert int(orientation.exif_orientation(data)) == value, (big_endian, value)
            ours = read_upright(tf.constant(data)).numpy().astype(int)
            theirs = exif_transposed(data).astype(int)
            assert ours.shape == upright.shape == theirs.shape, (big_endian, value)
            if image_format == "JPEG":  # lossy: both decoders near the photo, not equal
                assert np.abs(ours - upright).max() <= 6, (big_endian, value)
                assert np.abs(ours - theirs).max() <= 6, (big_endian, value)
            else:
                np.testing.assert_array_equal(ours, theirs)
                np.testing.assert_array_equal(ours, upright)


def with_exif(tiff):
    return encode(upright_photo(), "JPEG", tiff, quality=100, subsampling=0)


DAMAGED = {
    "byte order mark": tiff_block(6, order=b"XY"),
    "magic number": tiff_block(6, magic=43),
    "directory past the block": tiff_block(6, directory=0xFFFFFF00),
    "directory before the block": tiff_block(6, directory=2),
    "cut inside the directory": tiff_block(6)[:20],
    "value 0": tiff_block(0),
    "value 9": tiff_block(9),
    "value 65535": tiff_block(0xFFFF),
    "type ASCII": tiff_block(6, kind=2),
    "empty block": b"",
}


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_or_missing_exif_reads_as_stored(name):
    data = with_exif(DAMAGED[name])
    assert int(orientation.exif_orientation(data)) == 1
    stored = tf.io.decode_jpeg(data, channels=3).numpy()
    np.testing.assert_array_equal(read_upright(tf.constant(data)).numpy(), stored)


def test_files_without_orientation_read_as_stored():
    photo = upright_photo()
    for data in (
        encode(photo, "JPEG"),  # no EXIF at all
        encode(photo, "PNG"),
        encode(photo, "GIF"),
        encode(photo, "BMP"),
        encode(photo, "JPEG", tiff_block(6, kind=4)[:8]),  # a header, no directory
        b"",
        b"\xff\xd8\xff\xe1\xff\xff Exif",  # an APP1 that claims more than the file has
        b"not an image at all",
    ):
        assert int(orientation.exif_orientation(data)) == 1
    # LONG values, which some writers use, count as PIL counts them.
    assert int(orientation.exif_orientation(with_exif(tiff_block(8, kind=4)))) == 8
    assert int(orientation.exif_orientation(with_exif(tiff_block(8, False, kind=4)))) == 8


def test_jpeg_segments_find_the_frame_the_exif_and_a_cut():
    data = stored_file(6)
    segments = jpeg_segments(data)
    assert (int(segments.height), int(segments.width)) == (64, 48)  # stored sideways
    assert not bool(segments.truncated)
    assert data[int(segments.exif_start) : int(segments.exif_start) + 2] == b"MM"
    for cut in (data[:20], data[: int(segments.scan_start)], data[:-2], data[: len(data) // 2]):
        assert bool(jpeg_segments(cut).truncated)
    # Data after the end-of-image marker (motion photos append a video) is not a cut.
    assert not bool(jpeg_segments(data + b"\0" * 100 + b"ftypmp42").truncated)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_pretraining_crops_are_taken_on_the_upright_photo(image_format):
    """decode_and_crop: the same seed gives the same window of the upright photo, whatever the
    orientation the photo is stored in (JPEGs decode only the window, mapped onto the stored
    pixels)."""
    photo = upright_photo(96, 128)
    upright = encode(photo, image_format, **({"quality": 100, "subsampling": 0}))
    crop = tf.function(decode_and_crop)
    for seed in ([1, 2], [7, 3]):
        seed = tf.constant(seed, tf.int64)
        expected = crop(tf.constant(upright), seed).numpy().astype(int)
        assert expected.shape[:2] != photo.shape[:2]  # a real crop
        for value in range(2, 9):
            data = stored_file(value, image_format, photo=photo)
            crop_of_stored = crop(tf.constant(data), seed).numpy().astype(int)
            assert crop_of_stored.shape == expected.shape, value
            assert np.abs(crop_of_stored - expected).max() <= 6, value
