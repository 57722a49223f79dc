"""Fine-tune BiT on your own photos: one subfolder per class, e.g. photos/cat/*.jpg, photos/dog/*.

    python examples/finetune_folder.py photos/ --weights BiT-M-R50x1

Unreadable files are skipped and reported (before training, or when one fails to decode);
20% of every class is held out for validation; the BiT-HyperRule picks the schedule, resolution
and MixUp from the data, and a batch that does not fit the memory is split into micro-batches.
Stop it with Ctrl-C (or SIGTERM): it writes a checkpoint and exits with status 128 + signal; run
it again to resume from that checkpoint. `--weights=""` starts from random weights (no download).
"""

import argparse
import os
import sys

import bit_tf
from bit_tf.data import pipelines as data
from bit_tf.finetune.recipe import TrainingInterruptedError


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder with one subfolder of images per class")
    parser.add_argument("--model", default="BiT-M-R50x1", help="a name from bit_tf.list_models()")
    parser.add_argument(
        "--weights", default="BiT-M-R50x1", help='released name, .npz or URL; "" for random'
    )
    parser.add_argument("--batch_size", type=int, default=128, help="global batch size")
    parser.add_argument(
        "--accumulate", type=int, help="gradient accumulation steps (default: as memory needs)"
    )
    parser.add_argument("--output", default="finetuned", help="folder for checkpoints and model")
    parser.add_argument("--steps", type=int, help="training steps (default: the HyperRule's)")
    parser.add_argument("--crop", type=int, help="crop size (default: the HyperRule's)")
    args = parser.parse_args()

    source = data.from_folder(args.folder)
    train, validation = data.split(source, validation_fraction=0.2, seed=0)
    print(f"{train.num_examples} training and {validation.num_examples} validation images")

    try:
        model, history = bit_tf.finetune(
            args.model,
            train,
            validation,
            weights=args.weights or None,
            batch_size=args.batch_size,
            gradient_accumulation_steps=args.accumulate or "auto",
            checkpoint_dir=f"{args.output}/checkpoints",
            steps=args.steps,
            crop=args.crop,
        )
    except TrainingInterruptedError as interrupted:
        print(interrupted, file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The checkpoint is on disk: leave at once, as bit-finetune does (TensorFlow's runtime
        # can hang at interpreter shutdown after an interrupted fit).
        os._exit(128 + interrupted.signal_number)
    model.save(f"{args.output}/model.keras")
    print(f"validation accuracy: {history.history['val_accuracy'][-1]:.4f}")


if __name__ == "__main__":
    main()
