"""The upstream augmentation of BiT: Inception-style random crops, resized, randomly flipped.

Crops cover 5%-100% of the image's area with an aspect ratio of 3/4-4/3 and are resized to
224x224 in BiT; every random choice is a stateless function of a seed. `ExampleAugmentation`
seeds each example of an input pipeline with (seed, worker, epoch, position), so the stream of
`bit_tf.pretrain.data.UpstreamInput` is a function of where it is, and resumes exactly.

Example:
    >>> image = inception_crop(tf.io.read_file("cat.jpg"), tf.constant([1, 2]), 224)
    >>> augment = ExampleAugmentation(seed=0, worker=0, image_size=224)
    >>> image = augment(epoch=0, position=5, image_bytes=tf.io.read_file("cat.jpg"))
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from bit_tf.data.orientation import exif_orientation, stored_window, turn, upright_shape

#: Inception crop: fraction of the image area, and aspect ratio range (big_vision's defaults).
CROP_AREA_RANGE = (0.05, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
DEFAULT_IMAGE_SIZE = 224


def inception_crop(
    image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int = DEFAULT_IMAGE_SIZE
) -> tf.Tensor:
    """Decodes JPEG/PNG bytes, takes a random Inception-style crop, resizes and flips it.

    Deterministic given `seed` (a stateless seed, shape [2]). Returns float32 in [0, 1],
    shape (image_size, image_size, 3). Bytes that do not decode raise
    `tf.errors.InvalidArgumentError` (`UpstreamInput` skips such images).

    Example:
        >>> image = inception_crop(tf.io.read_file("cat.jpg"), tf.constant([1, 2]), 224)
    """
    crop_seed, flip_seed = crop_and_flip_seeds(seed)
    return resize_and_flip(decode_and_crop(image_bytes, crop_seed), flip_seed, image_size)


def crop_and_flip_seeds(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits one stateless seed (shape [2]) into the crop's and the flip's.

    Example:
        >>> crop_seed, flip_seed = crop_and_flip_seeds(tf.constant([1, 2], tf.int64))
    """
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


def decode_and_crop(
    image_bytes: tf.Tensor, crop_seed: tf.Tensor, orientation: tf.Tensor | None = None
) -> tf.Tensor:
    """The decoding half of `inception_crop`: uint8 pixels of the random crop window.

    The window is drawn on the upright image (the EXIF orientation applied,
    `bit_tf.data.orientation`), and its pixels are returned upright. JPEGs decode only the window
    (`decode_and_crop_jpeg`), so the window is drawn here too, then mapped onto the stored
    pixels and the decoded window turned upright: the same pixels as cropping the upright
    image. A photo without orientation (or orientation 1) gets the same window as ever.

    Args:
        image_bytes: a JPEG, PNG, GIF, BMP or WebP file (scalar string).
        crop_seed: the stateless seed of the window (shape [2]).
        orientation: the file's `bit_tf.data.orientation.exif_orientation`, where the caller read it
            for a batch of files at once (cheaper than once per file in a `tf.data` map);
            None: read here.

    Example:
        >>> pixels = decode_and_crop(tf.io.read_file("cat.jpg"), crop_seed)  # uint8 (h, w, 3)
    """

    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=crop_seed,
            area_range=CROP_AREA_RANGE,
            aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
            min_object_covered=0.0,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, size

    if orientation is None:
        orientation = exif_orientation(image_bytes)

    upright = tf.equal(orientation, 1)  # stored upright: the crop as ever, nothing turned

    def crop_jpeg():
        stored_shape = tf.image.extract_jpeg_shape(image_bytes)

        def crop(begin, size):
            crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
            return tf.image.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)

        def crop_upright():
            begin, size = window(upright_shape(stored_shape, orientation))
            begin, size = stored_window(begin, size, stored_shape, orientation)
            return turn(crop(begin, size), orientation)

        return tf.cond(upright, lambda: crop(*window(stored_shape)), crop_upright)

    def crop_other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image = tf.cond(upright, lambda: image, lambda: turn(image, orientation))
        begin, size = window(tf.shape(image))
        return tf.slice(image, begin, size)

    return tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)


def resize_and_flip(image: tf.Tensor, flip_seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """The rest of `inception_crop`: uint8 crop -> float32 [0, 1], resized, maybe flipped.

    Example:
        >>> image = resize_and_flip(decode_and_crop(image_bytes, crop_seed), flip_seed, 224)
    """
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (image_size, image_size))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ExampleAugmentation:
    """`inception_crop` of the examples of one input pipeline (`worker`), each seeded by
    where it is in the stream: (seed, worker, epoch, position).

    Example:
        >>> augment = ExampleAugmentation(seed=0, worker=1, image_size=224)
        >>> crop_seed, flip_seed = augment.seeds(epoch=3, position=17)
        >>> image = augment(3, 17, tf.io.read_file("cat.jpg"))
    """

    seed: int
    worker: int
    image_size: int = DEFAULT_IMAGE_SIZE

    def seeds(self, epoch: tf.Tensor, position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The (crop, flip) stateless seeds of the record at `position` of `epoch`.

        Example:
            >>> crop_seed, flip_seed = augment.seeds(tf.constant(0), tf.constant(5))
        """
        seed = tf.stack(
            [
                tf.cast(self.seed, tf.int64) * 1_000_003 + tf.cast(self.worker, tf.int64),
                tf.cast(epoch, tf.int64) * 2**32 + tf.cast(position, tf.int64),
            ]
        )
        return crop_and_flip_seeds(seed)

    def __call__(self, epoch: tf.Tensor, position: tf.Tensor, image_bytes: tf.Tensor) -> tf.Tensor:
        """The augmented image of the record at `position` of `epoch`, float32 in [0, 1].

        Example:
            >>> image = augment(tf.constant(0), tf.constant(5), image_bytes)
        """
        crop_seed, flip_seed = self.seeds(epoch, position)
        image = decode_and_crop(image_bytes, crop_seed)
        return resize_and_flip(image, flip_seed, self.image_size)
