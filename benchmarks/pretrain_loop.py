"""Steps per second of bit-pretrain's training loop with 1 and with N steps per tf.function call.

A small model (BiT-S-R18x1 with one unit per block, 32x32 images, batch 16, 5 classes) on a
MirroredStrategy over 2 logical CPU devices, fed from an in-memory dataset so that the loop, not
the input, is timed. One process builds both loops on the same model and times them in
alternating rounds (each round: `--steps` steps of each loop, after one warm-up call each), so
that a machine whose load changes treats both alike; the figure is the median over rounds.

    python benchmarks/pretrain_loop.py                       # N = 1 against N = 20, 7 rounds
    python benchmarks/pretrain_loop.py --steps_per_loop=100 --rounds=5

Writes benchmarks/results/<UTC time>-pretrain-loop.json (`--results_dir=` for none).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps_per_loop", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60, help="steps per loop and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--results_dir", default=None)
    arguments = parser.parse_args()
    if arguments.steps % arguments.steps_per_loop:
        parser.error("--steps must be a multiple of --steps_per_loop")

    from bit_tf.pretrain.recipe import configure_cpu_devices

    configure_cpu_devices(2)
    import harness
    import keras
    import numpy as np
    import tensorflow as tf

    import bit_tf
    from bit_tf.pretrain.recipe import make_optimizer, make_strategy, make_train_loop

    started = time.time()
    strategy = make_strategy("mirrored")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = bit_tf.resnet_v2(
            units_per_block=(1, 1, 1, 1), unit="basic", num_classes=5, input_shape=(32, 32, 3)
        )
        optimizer = make_optimizer(0.01)
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(64, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 5, size=(64,)).astype("int32")

    def dataset_fn(context):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
        return dataset.batch(context.get_per_replica_batch_size(16), drop_remainder=True)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    contenders = {1: None, arguments.steps_per_loop: None}
    for steps_per_loop in contenders:
        loop = make_train_loop(strategy, model, optimizer, global_batch_size=16)
        length = tf.constant(steps_per_loop, tf.int32)
        float(loop(iterator, tf.constant(0), length)["loss"])  # trace and warm up
        contenders[steps_per_loop] = (loop, length)

    steps_per_second = {steps_per_loop: [] for steps_per_loop in contenders}
    for _ in range(arguments.rounds):
        for steps_per_loop, (loop, length) in contenders.items():
            begin = time.perf_counter()
            for _ in range(arguments.steps // steps_per_loop):
                sums = loop(iterator, tf.constant(0), length)
                float(sums["loss"])  # the host reads the sums once per call, as bit-pretrain
            steps_per_second[steps_per_loop].append(arguments.steps / (time.perf_counter() - begin))

    medians = {n: statistics.median(values) for n, values in steps_per_second.items()}
    for n, median in medians.items():
        print(f"steps_per_loop={n}: {median:.2f} steps/s (median of {arguments.rounds} rounds)")
    ratio = medians[arguments.steps_per_loop] / medians[1]
    print(f"N={arguments.steps_per_loop} over N=1: {ratio:.3f}x")
    run = {
        "schema": "bit_tf-pretrain-loop/1",
        "benchmark": (
            "bit_tf.pretrain.loop.make_train_loop, BiT-S-R18x1 with units (1,1,1,1), 32x32, "
            "global batch 16, 5 classes, MirroredStrategy over 2 logical CPU devices, in-memory "
            f"data; {arguments.rounds} alternating rounds of {arguments.steps} steps each"
        ),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": harness.machine(),
        "load_average": os.getloadavg(),
        "versions": harness.versions(("tensorflow", "keras", "numpy")),
        "git": harness.git_commit(),
        "results": {
            f"steps_per_loop_{n}": {
                "median_steps_per_second": round(medians[n], 3),
                "steps_per_second_by_round": [round(value, 3) for value in values],
            }
            for n, values in steps_per_second.items()
        },
        "ratio_median": round(ratio, 4),
    }
    folder = arguments.results_dir
    if folder is None:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if folder:
        print("wrote", harness.write_results(folder, "pretrain-loop", run, started))


if __name__ == "__main__":
    main()
