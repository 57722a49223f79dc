"""bit-predict: classify image files with a BiT model and print the top classes of each.

    bit-predict --model=photos_run/model.keras cat.jpg dog.png
    bit-predict --model=serving/photos --format=json photos/*.jpg
    bit-predict --model=BiT-M-R50x1-ILSVRC2012 --top_k=3 cat.jpg

--model is a .keras file saved by bit-finetune (it keeps the names of the classes it was
fine-tuned on), a released checkpoint name or an official .npz path or URL (the ImageNet-1k
heads print class names, the ImageNet-21k heads WordNet ids), or a serving SavedModel folder of
bit-export --serving_dir. Files (JPEG, PNG, GIF, BMP or WebP, any size, grayscale or RGBA) are
decoded and resized as the serving signature does, at the BiT-HyperRule's evaluation crop for
each file's size unless --image_size says otherwise.

Photos are read upright (their EXIF orientation applied), as the training folder reader reads
them.

Output: per file, the top classes with their ids, names and probabilities: a table, or one JSON
object per line with --format=json, printed as each batch of --batch_size files is answered, in
the order of the files. On a terminal, stderr shows how many files are done and the time left;
in a pipe or a log it stays quiet. A file that cannot be read or decoded is reported on its
line, and the others are answered; the exit status is then 1. Settings that cannot work end
with one line on stderr and status 2.
"""

from __future__ import annotations

from absl import flags

from bit_cli import common
from bit_cli.answer_printing import print_answers

PROGRAM = "bit-predict"
FLAGS = flags.FLAGS

flags.DEFINE_string(
    "model",
    "BiT-M-R50x1-ILSVRC2012",
    "The classifier: a .keras file of bit-finetune, a released checkpoint name with a head "
    "(BiT-S-R50x1, BiT-M-R50x1, BiT-M-R50x1-ILSVRC2012, ...), a path or URL of an official .npz, "
    "timm's checkpoint with a head (hf-hub:timm/resnetv2_50x1_bit.goog_in21k_ft_in1k, a timm "
    "release name or a model.safetensors path), "
    "or a serving SavedModel folder of bit-export --serving_dir (its newest numeric version).",
)
flags.DEFINE_string(
    "class_names",
    "",
    "Class names: comma-separated, or a text file with one per line, in class-id order. Empty: "
    "the model's own (fine-tuned names, the ImageNet-1k names, ImageNet-21k WordNet ids), else "
    "class ids only.",
)
flags.DEFINE_integer("top_k", 5, "How many classes to print per file (at most all of them).")
flags.DEFINE_integer(
    "image_size",
    0,
    "Square size to resize each image to. 0: the model's fixed input size, else the "
    "BiT-HyperRule's evaluation crop for the file's size "
    "(bit_tf.finetune.hyperrule.get_resolution: 128 "
    "under 96x96 pixels, else 384, or 480 for R152x4). Not for serving SavedModels, which "
    "resize to their export size.",
)
flags.DEFINE_enum(
    "format", "table", ["table", "json"], "table: for reading; json: one JSON object per line."
)
flags.DEFINE_integer(
    "batch_size",
    16,
    "Files per forward pass of a Keras model or checkpoint, or per request to a serving "
    "SavedModel; each batch's answers are printed when it is done.",
)


def main(argv):
    paths = argv[1:]
    if not paths:
        common.fail(PROGRAM, "Give the image files to classify, e.g. bit-predict cat.jpg dog.png.")
    for name, smallest in (("top_k", 1), ("batch_size", 1), ("image_size", 0)):
        if getattr(FLAGS, name) < smallest:
            common.fail(PROGRAM, f"--{name}={getattr(FLAGS, name)} must be at least {smallest}.")
    from bit_cli.predictors import load_classifier

    # ValueError here: a --class_names file, a model or settings that cannot classify.
    with common.user_errors(PROGRAM, ValueError):
        class_names = common.read_class_names(FLAGS.class_names)
        classifier = load_classifier(
            FLAGS.model, class_names, FLAGS.image_size or None, FLAGS.batch_size
        )
    all_answered = print_answers(classifier, paths, FLAGS.top_k, FLAGS.format == "json")
    return 0 if all_answered else 1


def run():
    """The `bit-predict` console script."""
    common.run(main, __name__)


if __name__ == "__main__":
    run()
