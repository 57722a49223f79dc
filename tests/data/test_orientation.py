"""bit_tf.data.orientation: the EXIF orientation of JPEG, PNG and WebP files, read and applied in
graph ops as PIL's ImageOps.exif_transpose (the training folder reader) applies it; damaged or
missing EXIF reads as stored; pre-training's random crop is taken on the upright photo."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from bit_tf.data import orientation
from bit_tf.data.image_bytes import jpeg_segments
from bit_tf.pretrain.augment import decode_and_crop

from exif_photos import encode, stored_file, tiff_block, upright_photo


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
            # JPEG's colour conversion moves a value by at most 1; the turns are lossless.
            assert np.abs(ours - upright).max() <= (1 if image_format == "JPEG" else 0)
            np.testing.assert_array_equal(ours, theirs)


def with_exif(tiff):
    return encode(upright_photo(), "JPEG", tiff, quality=100, subsampling=0)


DAMAGED = {
    "byte order mark": tiff_block(6, order=b"XY"),
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
    np.testing.assert_array_equal(exif_transposed(data), stored)  # as the folder reader reads it


def test_what_pil_reads_despite_damage_is_read_alike():
    """A wrong TIFF magic number and a LONG value: PIL (the folder reader) applies them."""
    for tiff in (tiff_block(6, magic=43), tiff_block(8, kind=4), tiff_block(8, False, kind=4)):
        data = with_exif(tiff)
        np.testing.assert_array_equal(
            read_upright(tf.constant(data)).numpy(), exif_transposed(data)
        )
        assert int(orientation.exif_orientation(data)) in (6, 8)


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


def segments_of(data):
    """A JPEG's marker segments before its first scan, and the rest (from the scan on)."""
    segments, position = [], 2
    while data[position + 1] != 0xDA:
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        segments.append(data[position:end])
        position = end
    return segments, data[position:]


def test_the_exif_segment_is_found_among_the_first_segments():
    """Cameras put it first, PIL after JFIF's APP0, photo tools after an ICC profile (APP2) too:
    found among the first `SEGMENTS_SEARCHED` segments, as documented."""
    segments, rest = segments_of(stored_file(6))
    app1 = next(segment for segment in segments if segment[1] == 0xE1)
    others = [segment for segment in segments if segment[1] != 0xE1]
    icc = b"\xff\xe2" + (2 + 300).to_bytes(2, "big") + b"ICC_PROFILE\0" + b"\x07" * 288
    for before in range(orientation.SEGMENTS_SEARCHED + 1):
        layout = others[:1] + [icc] * before + [app1] + others[1:]
        data = b"\xff\xd8" + b"".join(layout) + rest
        expected = 6 if before + 2 <= orientation.SEGMENTS_SEARCHED else 1
        assert int(orientation.exif_orientation(data)) == expected, before
        assert exif_transposed(data).shape == (48, 64, 3)  # PIL reads each upright


def test_jpeg_segments_find_the_frame_and_a_cut():
    data = stored_file(6)
    segments = jpeg_segments(data)
    assert (int(segments.height), int(segments.width)) == (64, 48)  # stored sideways
    assert not bool(segments.truncated)
    assert data[int(segments.scan_start) : int(segments.scan_start) + 2] == b"\xff\xda"
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
        expected = crop(tf.constant(upright), seed).numpy()
        assert expected.shape[:2] != photo.shape[:2]  # a real crop
        for value in range(2, 9):
            data = stored_file(value, image_format, photo=photo)
            crop_of_stored = crop(tf.constant(data), seed).numpy()
            np.testing.assert_array_equal(crop_of_stored, expected, err_msg=str(value))
