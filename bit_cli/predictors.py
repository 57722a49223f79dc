"""The classifiers behind bit-predict: the top classes of image files, read as serving reads them.

- `KerasClassifier`: a bit_tf Keras model (a fine-tuned `.keras` file, or a model built from a
  released name or an official `.npz`). Each file is decoded and resized by
  `hub_export.serving.decode_images`, the serving signature's own function, at the size given,
  else the BiT-HyperRule's evaluation crop for the file's size
  (`bit_tf.finetune.hyperrule.get_resolution`).
- `ServingClassifier`: a TensorFlow Serving SavedModel from `hub_export.export_serving`. Each
  file's bytes go to its `serving_default` signature, which decodes and resizes them in its
  graph, at the size it was exported at.

`load_classifier` picks one for a `--model` value. Both read photos upright (their EXIF
orientation applied, `bit_tf.data.orientation`). A file that cannot be read or decoded (not an
image, truncated, damaged) gets an `Answer` with a one-line `error`; the other files are
answered as they would be alone. `answer_batches` answers a list of files a batch at a time,
reading each batch's files only when it comes to it, so the first answers come before the last
file is read and memory does not grow with the number of files.

Example:
    >>> classifier = load_classifier("photos_run/model.keras")
    >>> answer = classifier.classify(["cat.jpg", "dog.png"], top_k=2)[0]
    >>> answer.top_classes[0].name, answer.error
    ('cat', None)
    >>> for answers in classifier.answer_batches(many_paths, top_k=5):
    ...     print(*(answer.path for answer in answers))
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bit_cli import common
from bit_cli.answers import Answer, TopClass

if TYPE_CHECKING:
    import keras

#: The file formats both classifiers read.
FORMATS = "JPEG, PNG, GIF, BMP or WebP"


def _checked_names(names: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    if names is None:
        return None
    names = tuple(str(name) for name in names)
    if len(names) != num_classes:
        raise ValueError(
            f"{len(names)} class names given for a model with {num_classes} classes; give "
            "exactly one name per class, in class-id order."
        )
    return names


def _top_classes(
    probabilities: np.ndarray, top_k: int, names: tuple[str, ...] | None
) -> tuple[TopClass, ...]:
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return tuple(
        TopClass(int(index), None if names is None else names[index], float(probabilities[index]))
        for index in order
    )


def _read(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"


def _decoder_message(error: Exception) -> str:
    """The first line of a TensorFlow decoder's error, without the graph's node names."""
    message = getattr(error, "message", None) or str(error)
    return message.strip().splitlines()[0].split(" [[")[0].strip()


def _problem(reason: str) -> str:
    """The `error` of an `Answer` for the `reason` the decoder gave (`hub_export.serving`)."""
    if reason.startswith("not a "):
        return f"not a {FORMATS} image"
    if reason == "empty":
        return "the file is empty"
    return f"cannot decode the image: {reason}"


class _BatchedClassifier(abc.ABC):
    """What both classifiers share: files answered `batch_size` at a time, in order."""

    batch_size: int

    def answer_batches(self, paths: Sequence[str], top_k: int) -> Iterator[list[Answer]]:
        """The answers of `paths`, in their order, one list per batch of `batch_size` files; a
        batch's files are read only when it is its turn.

        Example:
            >>> for answers in classifier.answer_batches(["a.jpg", "b.jpg", "c.jpg"], top_k=1):
            ...     print([answer.path for answer in answers])
        """
        for start in range(0, len(paths), self.batch_size):
            yield self._classify_batch(paths[start : start + self.batch_size], top_k)

    def classify(self, paths: Sequence[str], top_k: int) -> list[Answer]:
        """The top `top_k` classes of each file, in the order of `paths`.

        Example:
            >>> [answer.error for answer in classifier.classify(["cat.jpg", "notes.txt"], 3)]
            [None, 'not a JPEG, PNG, GIF, BMP or WebP image']
        """
        return [answer for answers in self.answer_batches(paths, top_k) for answer in answers]

    @abc.abstractmethod
    def _classify_batch(self, paths: Sequence[str], top_k: int) -> list[Answer]:
        """The answers of one batch of files, in their order."""


class KerasClassifier(_BatchedClassifier):
    """A bit_tf Keras classifier on image files, decoded as the serving signature decodes them.

    Args:
        model: a bit_tf model with a head (its `class_names`, if any, name the classes).
        class_names: one name per class, in class-id order, instead of the model's.
        image_size: the square size to resize to; None: the model's fixed input size, else the
            HyperRule's evaluation crop for each file's size.
        batch_size: files per forward pass.

    Example:
        >>> classifier = KerasClassifier(keras.models.load_model("run/model.keras"))
        >>> classifier.classify(["cat.jpg"], top_k=1)[0].top_classes[0].name
        'cat'
    """

    def __init__(
        self,
        model: keras.Model,
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        batch_size: int = 16,
    ):
        # The architecture's name ("R152x4"), which the HyperRule's resolution looks for; a
        # model that is not a bit_tf ResNetV2 is refused here, by what it is.
        from bit_tf.models.create import architecture_of

        self.architecture = architecture_of(model)
        if not any(layer.name == "head" for layer in model.layers):
            raise ValueError(
                f"Model {model.name!r} has no head: it ends at the pre-logits (a feature "
                "extractor). bit-predict needs a classifier, e.g. the model.keras of bit-finetune."
            )
        self.model = model
        self.num_classes = int(model.output_shape[-1])
        self.class_names = _checked_names(
            class_names if class_names is not None else getattr(model, "class_names", None),
            self.num_classes,
        )
        fixed_size = model.input_shape[1] if model.input_shape[1] == model.input_shape[2] else None
        self.image_size = image_size or fixed_size
        self.batch_size = batch_size

    def image_size_for(self, height: int, width: int) -> int:
        """The size a file of `height` x `width` pixels is resized to.

        Example:
            >>> classifier.image_size_for(32, 32), classifier.image_size_for(480, 640)
            (128, 384)
        """
        from bit_tf.finetune import hyperrule

        return self.image_size or hyperrule.get_resolution((height, width), self.architecture)[1]

    def _decode(self, path: str) -> np.ndarray | str:
        """The file as a float32 image in [0, 1], resized; or why it cannot be."""
        import tensorflow as tf

        from hub_export.image_decoding import declared_sizes, decode_images_with_reasons

        data = _read(path)
        if isinstance(data, str):
            return data
        items = tf.constant([data])
        try:
            heights, widths = declared_sizes(items)
            height, width = int(heights[0]), int(widths[0])
        except tf.errors.OpError:  # an unreadable JPEG header: the decoder below says so
            height = width = 0
        size = self.image_size_for(height, width) if height and width else self.image_size or 8
        images, valid, reasons = decode_images_with_reasons(items, size)
        if not bool(valid[0]):
            return _problem(reasons[0].numpy().decode("utf-8"))
        return images[0].numpy()

    def _classify_batch(self, paths: Sequence[str], top_k: int) -> list[Answer]:
        decoded = [self._decode(path) for path in paths]
        answers: list[Answer | None] = [None] * len(paths)
        by_size: dict[int, list[int]] = {}
        for index, image in enumerate(decoded):
            if isinstance(image, str):
                answers[index] = Answer(paths[index], error=image)
            else:
                by_size.setdefault(image.shape[0], []).append(index)
        for indices in by_size.values():
            logits = np.asarray(
                self.model.predict_on_batch(np.stack([decoded[i] for i in indices]))
            )
            logits = logits.astype("float64")
            exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
            for index, row in zip(indices, probabilities, strict=True):
                top = _top_classes(row, top_k, self.class_names)
                answers[index] = Answer(paths[index], top)
        return answers


def serving_version_folder(folder: str) -> str | None:
    """The SavedModel folder of a serving export: `folder` itself, or its newest numeric version
    (TensorFlow Serving's layout); None where there is none.

    Example:
        >>> serving_version_folder("serving/flowers")
        'serving/flowers/2'
    """
    if os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return folder
    versions = [
        int(name)
        for name in os.listdir(folder)
        if name.isdigit() and os.path.isfile(os.path.join(folder, name, "saved_model.pb"))
    ]
    return os.path.join(folder, str(max(versions))) if versions else None


class ServingClassifier(_BatchedClassifier):
    """A serving SavedModel of `hub_export.export_serving` on image files, through its
    `serving_default` signature (the bytes of `batch_size` files per request).

    Args:
        folder: the SavedModel folder, or the base folder of its numeric versions (the newest).
        class_names: one name per class, in class-id order, instead of those exported with it.
        batch_size: files per request.

    Example:
        >>> classifier = ServingClassifier("serving/flowers")
        >>> classifier.classify(["rose.jpg"], top_k=1)[0].top_classes[0].name
        'rose'
    """

    def __init__(self, folder: str, class_names: Sequence[str] | None = None, batch_size: int = 16):
        import tensorflow as tf

        version_folder = serving_version_folder(folder)
        if version_folder is None:
            raise ValueError(
                f"Folder {folder!r} holds no SavedModel (saved_model.pb), neither in itself nor "
                "in a numeric version folder; give a serving export of bit-export --serving_dir, "
                "a .keras file or a checkpoint."
            )
        self.loaded = tf.saved_model.load(version_folder)
        self.signature = self.loaded.signatures.get("serving_default")
        inputs = {} if self.signature is None else self.signature.structured_input_signature[1]
        if "image_bytes" not in inputs:
            raise ValueError(
                f"SavedModel {version_folder!r} is not a serving export: its serving_default "
                "signature does not take image_bytes (a hub module takes images). Export one "
                "with bit-export --kind=classification --serving_dir=..."
            )
        self.folder = version_folder
        self.num_classes = int(self.signature.structured_outputs["probabilities"].shape[-1])
        exported = getattr(self.loaded, "class_names", None)  # a tf.Variable, when exported
        if class_names is None and exported is not None:
            class_names = [name.decode("utf-8") for name in exported.numpy()]
        self.class_names = _checked_names(class_names, self.num_classes)
        self.batch_size = batch_size

    def _classify_batch(self, paths: Sequence[str], top_k: int) -> list[Answer]:
        import tensorflow as tf

        answers: list[Answer | None] = [None] * len(paths)
        readable = {}
        for index, path in enumerate(paths):
            data = _read(path)
            if isinstance(data, str):
                answers[index] = Answer(path, error=data)
            else:
                readable[index] = data
        if len(readable) > 1:
            try:
                outputs = self.signature(image_bytes=tf.constant(list(readable.values())))
                outputs = {key: value.numpy() for key, value in outputs.items()}
            except tf.errors.OpError:  # older exports fail a whole request on some bytes
                outputs = None
            if outputs is not None:
                for row, index in enumerate(readable):
                    answers[index] = self._answer(paths[index], outputs, row, top_k)
                return answers
        for index, data in readable.items():
            try:
                outputs = self.signature(image_bytes=tf.constant([data]))
                outputs = {key: value.numpy() for key, value in outputs.items()}
            except tf.errors.OpError as error:
                message = f"cannot decode the image: {_decoder_message(error)}"
                answers[index] = Answer(paths[index], error=message)
                continue
            answers[index] = self._answer(paths[index], outputs, 0, top_k)
        return answers

    def _answer(self, path: str, outputs: dict, row: int, top_k: int) -> Answer:
        """The answer of the request's item `row` (`outputs`: the signature's, as arrays)."""
        if not bool(outputs["valid"][row]):
            if "reason" in outputs:  # exports since the reason output
                reason = outputs["reason"][row].decode("utf-8")
                return Answer(path, error=_problem(reason))
            return Answer(
                path,
                error=f"not a {FORMATS} image that this serving model reads, or too many pixels",
            )
        probabilities = outputs["probabilities"][row].astype("float64")
        return Answer(path, _top_classes(probabilities, top_k, self.class_names))


def load_classifier(
    model: str,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
) -> KerasClassifier | ServingClassifier:
    """The classifier for a `--model` value: a `.keras` file, a serving SavedModel folder, a
    released checkpoint name (e.g. BiT-M-R50x1-ILSVRC2012) or an official `.npz` path or URL.

    Raises:
        ValueError: the model cannot classify, or the settings do not fit it (with what to do).
        bit_tf.CheckpointError, bit_tf.models.download.DownloadError: the checkpoint cannot be had.

    Example:
        >>> load_classifier("BiT-M-R50x1-ILSVRC2012").class_names[:2]
        ('tench', 'goldfish')
    """
    if os.path.isdir(model):
        if image_size:
            raise ValueError(
                f"--image_size={image_size}: a serving SavedModel resizes in its graph, to the "
                "size it was exported at; leave --image_size out."
            )
        return ServingClassifier(model, class_names, batch_size)
    from bit_tf.models.create import HeadlessCheckpointError

    try:  # a .keras file, a released name, an .npz path or URL
        keras_model = common.build_model("", model, num_classes=common.HEAD_FROM_CHECKPOINT)
    except HeadlessCheckpointError:
        raise ValueError(
            f"Checkpoint {model!r} has no head: it ends at the pre-logits (a feature "
            "extractor). Give a classifier: a released name with a head (BiT-S-R50x1, "
            "BiT-M-R50x1-ILSVRC2012, ...), or a fine-tuned .keras file."
        ) from None
    return KerasClassifier(keras_model, class_names, image_size, batch_size)
