"""bit-export: write BiT models as TF-Hub modules, TF Serving SavedModels and published archives.

Examples:
    # The TF-Hub collection's bit/m-r50x1 feature vector (--weights defaults to the released
    # weights of --model), published to a bucket:
    bit-export --model=BiT-M-R50x1 --kind=feature_vector \\
        --export_dir=exports/bit_m-r50x1 --publish_to=gs://my-bucket/hub \\
        --publish_name=bit/m-r50x1

    # A fine-tuned classifier for TensorFlow Serving:
    bit-export --weights=flowers.keras --kind=classification --export_dir=exports/flowers \\
        --serving_dir=serving/flowers --image_size=128 --class_names=labels.txt

    # The same classifier for PyTorch users: timm's model.safetensors and config.json, which
    # timm.create_model("local-dir:exports/flowers_timm", pretrained=True) loads:
    bit-export --weights=flowers.keras --kind=classification --format=timm \\
        --export_dir=exports/flowers_timm --image_size=128
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from absl import app, flags, logging

from bit_cli import checks, common
from hub_export.serving import DEFAULT_BATCH_SIZE as DEFAULT_SERVING_BATCH_SIZE
from hub_export.serving import hyperrule_image_size

if TYPE_CHECKING:
    import keras

FLAGS = flags.FLAGS
PROGRAM = "bit-export"
#: The smallest serving crop (`hub_export.ServingModule`'s).
MIN_IMAGE_SIZE = 8

flags.DEFINE_string(
    "model",
    "",
    "Architecture name such as BiT-M-R50x1 (see bit_tf.list_models()). Empty: read the "
    "architecture from the --weights checkpoint (official .npz or released name).",
)
flags.DEFINE_string(
    "weights",
    None,
    "A released checkpoint name (BiT-M-R50x1, BiT-M-R50x1-ILSVRC2012, ...), a path or URL of "
    "an official-layout .npz, timm's checkpoint (hf-hub:timm/resnetv2_50x1_bit.goog_in21k, any "
    "hf-hub:<owner>/<name>[@revision], a timm release name, or a model.safetensors path), or a "
    ".keras file saved after fine-tuning. Default: the released weights of --model "
    "(--weights='' for random initialisation).",
)
flags.DEFINE_integer(
    "num_classes",
    0,
    "Head size for --kind=classification. 0: take it from the checkpoint's head (or the "
    "upstream default of --model).",
)
flags.DEFINE_enum(
    "kind",
    "feature_vector",
    ["feature_vector", "classification"],
    "feature_vector: the module returns pre-logits; classification: it returns logits.",
)
flags.DEFINE_enum(
    "format",
    "hub",
    ["hub", "timm"],
    "hub: a TF-Hub module (SavedModel) in --export_dir; timm: timm's model.safetensors and "
    "config.json in --export_dir, which timm.create_model('local-dir:<export_dir>', "
    "pretrained=True) loads in PyTorch (bit_tf.save_timm_weights).",
)
flags.DEFINE_string(
    "export_dir",
    "",
    "Where to write the hub module (or timm's files). Empty: exports/<weights name>_<kind>, "
    "with _timm appended for --format=timm.",
)
flags.DEFINE_string(
    "serving_dir",
    "",
    "Also write a TF Serving SavedModel at <serving_dir>/<serving_version>/ "
    "(classification only). Empty: skip.",
)
flags.DEFINE_integer("serving_version", 1, "Version folder for --serving_dir.")
flags.DEFINE_integer(
    "serving_batch_size",
    DEFAULT_SERVING_BATCH_SIZE,
    "Serving export: the most images it decodes and runs through the model at once; a larger "
    "request is answered batch after batch (the same answers), so a server's memory is that of "
    "one batch.",
)
flags.DEFINE_integer(
    "image_size",
    0,
    "Square crop for the serving export's in-graph resize: the crop the model was fine-tuned "
    "at (BiT-HyperRule, bit_tf.finetune.hyperrule.get_resolution: "
    f"{hyperrule_image_size(None, False)} "
    f"for images under 96x96 pixels, else {hyperrule_image_size()}, or "
    f"{hyperrule_image_size('R152x4')} for R152x4). 0: the model's fixed input size, else the "
    "HyperRule's crop for images over 96x96 pixels. --format=timm: the input size written in "
    "config.json (0: the model's fixed size, else 224).",
)
flags.DEFINE_boolean(
    "fold_weight_standardization",
    True,
    "Serving export: standardize the kernels once at export (faster, same outputs).",
)
flags.DEFINE_string(
    "class_names",
    "",
    "Class names for the serving export: comma-separated, or a text file with one per line. "
    "Empty: the model's own (a fine-tuned .keras keeps its folder or TFDS label names; released "
    "ImageNet heads have theirs), else none.",
)
flags.DEFINE_string(
    "publish_to",
    "",
    "Publish the module as <publish_to>/<publish_name>/<publish_version>.tar.gz plus a model "
    "card; a local folder or gs:// URL. Empty: skip.",
)
flags.DEFINE_string(
    "publish_name", "", "Published name, e.g. bit/m-r50x1. Empty: derived from --weights."
)
flags.DEFINE_integer("publish_version", 1, "Published version number.")
flags.DEFINE_string("upstream", "", "Pre-training data named in the model card. Empty: guessed.")
flags.DEFINE_boolean("overwrite", False, "Replace existing exports and published versions.")


def load_model(model_name: str, weights: str, kind: str, num_classes: int) -> keras.Model:
    """Builds the model to export from the flags' values (see the flag help).

    Everything goes through `bit_cli.common.build_model`, which reads the architecture from
    the checkpoint when `model_name` is empty; a fine-tuned `.keras` file keeps its head (its
    backbone for `kind="feature_vector"`).

    Example:
        >>> load_model("", "/data/BiT-M-R50x1.npz", "classification", 0).output_shape
        (None, 21843)
    """
    if kind == "feature_vector":
        classes = None
    elif num_classes > 0:
        classes = num_classes
    else:
        classes = common.HEAD_FROM_CHECKPOINT
    return common.build_model(model_name, weights, classes)


def _check_flags(export_dir: str) -> None:
    """Ends the run with one line, before any work, for a flag value that cannot work."""
    checks.not_negative(PROGRAM, num_classes=FLAGS.num_classes)
    if FLAGS.image_size and FLAGS.image_size < MIN_IMAGE_SIZE:
        common.fail(
            PROGRAM,
            f"--image_size must be 0 (the default) or at least {MIN_IMAGE_SIZE}, got "
            f"{FLAGS.image_size}.",
        )
    checks.positive(PROGRAM, publish_version=FLAGS.publish_version)
    checks.positive(PROGRAM, serving_batch_size=FLAGS.serving_batch_size)
    checks.model_name(PROGRAM, FLAGS.model)
    checks.folder_to_write(PROGRAM, "export_dir", export_dir)
    checks.folder_to_write(PROGRAM, "serving_dir", FLAGS.serving_dir)
    checks.folder_to_write(PROGRAM, "publish_to", FLAGS.publish_to)
    names = FLAGS.class_names
    looks_like_file = os.sep in names or os.path.splitext(names)[1] in (".txt", ".csv")
    if names and looks_like_file and "," not in names and not os.path.isfile(names):
        what = "is a folder, not" if os.path.isdir(names) else "names no"
        common.fail(PROGRAM, f"--class_names={names!r} {what} file of class names.")


def _check_serving(model: keras.Model, class_names: list[str] | None) -> None:
    """Ends the run with one line, before anything is written, if the serving export of `model`
    cannot be made with these class names."""
    if not FLAGS.serving_dir or class_names is None:
        return
    num_classes = model.output_shape[-1]
    if len(class_names) != num_classes:
        common.fail(
            PROGRAM,
            f"--class_names={FLAGS.class_names!r} gives {len(class_names)} class names for a "
            f"model with {num_classes} classes; give exactly one name per class, in class-id "
            "order.",
        )


def _serving_version_dir() -> str | None:
    """The serving version folder to write (<serving_dir>/<serving_version>), else None."""
    from hub_export.serving import serving_version_dir

    if not FLAGS.serving_dir:
        return None
    with common.user_errors("bit-export", ValueError):  # a --serving_version below 1
        return serving_version_dir(FLAGS.serving_dir, FLAGS.serving_version)


def _refuse_existing(path: str, what: str, flag_names: str) -> None:
    common.fail(
        PROGRAM,
        f"{what} {path} already exists; choose another {flag_names}, remove it, or pass "
        "--overwrite to replace it.",
    )


def _refuse_existing_serving() -> None:
    """Ends the run, before any work, if the serving folder to write exists."""
    import tensorflow as tf

    serving = _serving_version_dir()
    if serving is not None and tf.io.gfile.exists(serving):
        _refuse_existing(serving, "Serving version", "--serving_version or --serving_dir")


def _module_to_write(model, export_dir: str) -> bool:
    """Whether the module is still to be written: False where `export_dir` already holds the
    module of this very model and kind, left by a run that stopped before its serving export
    or archive (a full disk, Ctrl-C); ends the run if it holds something else."""
    import tensorflow as tf

    if FLAGS.overwrite or not tf.io.gfile.exists(export_dir):
        return True
    if not holds_module_of(export_dir, model, FLAGS.kind):
        _refuse_existing(export_dir, "Module folder", "--export_dir")
    if not (FLAGS.serving_dir or FLAGS.publish_to):
        print(f"module: {export_dir} (already written from these weights; nothing to do)")
    else:
        print(f"module: {export_dir} (already written from these weights; kept)")
    return False


def holds_module_of(export_dir: str, model: keras.Model, kind: str) -> bool:
    """Whether `export_dir` holds a whole hub module of `kind` whose variables are `model`'s
    (what `hub_export.export_module(model, export_dir, kind)` wrote).

    Example:
        >>> hub_export.export_module(model, "exports/pets", kind="classification")
        >>> holds_module_of("exports/pets", model, "classification")
        True
    """
    import numpy as np
    import tensorflow as tf

    from bit_tf.models.resnet_v2 import pre_logits_model
    from bit_tf.models.weights import official_arrays, official_name
    from hub_export.module import read_metadata

    try:
        if read_metadata(export_dir).get("kind") != kind:
            return False
        module = tf.saved_model.load(export_dir)
    except Exception:  # noqa: BLE001 (not a whole module of ours: it is refused as it is)
        return False
    found = {official_name(v.name): v.numpy() for v in getattr(module, "variables", [])}
    expected = official_arrays(model if kind == "classification" else pre_logits_model(model))
    return set(found) == set(expected) and all(
        np.array_equal(found[key].reshape(value.shape), value) for key, value in expected.items()
    )


def _export_timm(model, export_dir: str, class_names: list[str] | None) -> None:
    """Writes timm's files; --class_names (one per class) become config.json's label_names."""
    from bit_tf.models.timm_weights import save_timm_weights

    if class_names is not None and FLAGS.kind == "classification":
        if len(class_names) != model.output_shape[-1]:
            common.fail(
                PROGRAM,
                f"--class_names={FLAGS.class_names!r} gives {len(class_names)} class names for a "
                f"model with {model.output_shape[-1]} classes; give exactly one name per class.",
            )
        model.class_names = class_names
    path = save_timm_weights(
        model, export_dir, image_size=FLAGS.image_size or None, overwrite=FLAGS.overwrite
    )
    logging.info("Wrote timm's model.safetensors and config.json to %s", export_dir)
    print(f"timm: {path}")


def _export(model, export_dir: str, stem: str, class_names: list[str] | None) -> None:
    import hub_export

    if _module_to_write(model, export_dir):
        hub_export.export_module(model, export_dir, kind=FLAGS.kind, overwrite=FLAGS.overwrite)
        logging.info("Wrote the %s module to %s", FLAGS.kind, export_dir)
        print(f"module: {export_dir}")

    if FLAGS.serving_dir:
        if class_names is None and getattr(model, "class_names", None) is not None:
            print(f"class names: the model's {len(model.class_names)} (--class_names to change)")
        image_size = FLAGS.image_size or None
        if image_size is None and model.input_shape[1] is None:
            # The HyperRule's crop for images over 96x96 pixels, for this architecture.
            from bit_tf.models.create import architecture_of

            architecture = architecture_of(model)
            image_size = hyperrule_image_size(architecture)
            print(f"serving image size: {image_size} (BiT-HyperRule; --image_size to change)")
        version_dir = hub_export.export_serving(
            model,
            FLAGS.serving_dir,
            version=FLAGS.serving_version,
            class_names=class_names,
            image_size=image_size,
            fold_weight_standardization=FLAGS.fold_weight_standardization,
            overwrite=FLAGS.overwrite,
            batch_size=FLAGS.serving_batch_size,
        )
        print(f"serving: {version_dir}")

    if FLAGS.publish_to:
        name = FLAGS.publish_name or stem.lower().replace("_", "-")
        archive = hub_export.publish(
            export_dir,
            FLAGS.publish_to,
            name,
            FLAGS.publish_version,
            overwrite=FLAGS.overwrite,
            upstream=FLAGS.upstream or None,
        )
        print(f"published: {archive}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    weights = FLAGS.weights if FLAGS.weights is not None else FLAGS.model
    if not FLAGS.model and not weights:
        raise app.UsageError("Give --model, --weights, or both.")
    if FLAGS.serving_dir and FLAGS.kind != "classification":
        raise app.UsageError("--serving_dir needs --kind=classification.")
    timm = FLAGS.format == "timm"
    if timm and (FLAGS.serving_dir or FLAGS.publish_to):
        common.fail(PROGRAM, "--serving_dir and --publish_to are for --format=hub, not timm.")
    from bit_tf.models.create import weights_stem

    stem = weights_stem(weights or FLAGS.model)
    folder = f"{stem}_{FLAGS.kind}" + ("_timm" if timm else "")
    export_dir = FLAGS.export_dir or os.path.join("exports", folder)
    _check_flags(export_dir)
    if not FLAGS.overwrite:
        _refuse_existing_serving()
    with common.user_errors("bit-export", ValueError):  # an unreadable --class_names file
        class_names = common.read_class_names(FLAGS.class_names)
    # ValueError here: an unknown --model, a checkpoint without a head for --kind=classification.
    with common.user_errors("bit-export", ValueError):
        model = load_model(FLAGS.model, weights, FLAGS.kind, FLAGS.num_classes)
    _check_serving(model, class_names)
    from bit_tf.training.run_lock import holding

    # One run per folder: another bit-export into these folders is refused while this one runs.
    # An existing published version or timm file, a target another writer created meanwhile, a
    # full or read-only disk, Ctrl-C: one line (the shared ending); nothing half-written is left.
    # Stopped or refused before anything was written: no empty folders are left behind.
    with (
        common.folder_removed_if_left_empty(export_dir),
        common.folder_removed_if_left_empty(None if timm else FLAGS.serving_dir),
        holding(export_dir, program=PROGRAM, flag="--export_dir"),
        holding(None if timm else _serving_version_dir(), program=PROGRAM, flag="--serving_dir"),
        common.user_errors("bit-export", FileExistsError),
    ):
        if timm:
            _export_timm(model, export_dir, class_names)
        else:
            _export(model, export_dir, stem, class_names)


def run():
    """Console-script entry point of `bit-export`."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
