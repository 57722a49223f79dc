"""Many distributed SGD steps in one `tf.function` call, the way Orbit's trainers run them.

`make_train_loop` builds `train_loop(iterator, stop, num_steps)`: a `tf.range` loop in the
graph that takes `num_steps` batches from the distributed iterator and runs one `strategy.run`
SGD step on each. Loss, top-1 hits and example counts are added up on the devices, in
sync-on-read variables, and come back to the host once per call: the host does not wait for
the devices after every step, so accelerators are not left idle between steps.

The optimizer counts every step (`optimizer.iterations`, which also drives the learning-rate
schedule), so a call of `num_steps` steps moves the run exactly `num_steps` steps and takes
exactly `num_steps` batches; callers end calls where they checkpoint, so a resumed run
continues with the same input and the same steps.

A stop request (`stop`: 1 on a worker that got SIGTERM or SIGINT) is summed over all replicas
of all workers at the start of each call; a call that sees one runs no step, so all workers
stop at the same step.

Example:
    >>> loop = make_train_loop(strategy, model, optimizer, global_batch_size=4096)
    >>> sums = loop(iterator, tf.constant(0), tf.constant(100))
    >>> float(sums["loss"]) / float(sums["steps"])  # the mean loss of these 100 steps
    6.71
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: The sums `train_loop` returns (besides "steps" and "stop").
SUMS = ("loss", "hits", "examples")


def upstream_loss(labels: tf.Tensor, logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Per-example loss: softmax cross-entropy on class ids, or sigmoid cross-entropy summed
    over classes on multi-hot labels.

    Example:
        >>> upstream_loss(tf.constant([[0., 1.]]), tf.constant([[0., 0.]]), True)
        <tf.Tensor: shape=(1,), dtype=float32, numpy=array([1.3862944], dtype=float32)>
    """
    logits = tf.cast(logits, tf.float32)
    if multi_label:
        per_class = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=logits
        )
        return tf.reduce_sum(per_class, axis=-1)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


def top1_hits(labels: tf.Tensor, logits: tf.Tensor, multi_label: bool) -> tf.Tensor:
    """Per-example 1.0 where the top-scoring class is right: top-1 accuracy for class ids,
    precision@1 for multi-hot labels (the top class is one of the image's labels).

    Example:
        >>> top1_hits(tf.constant([[0., 1., 1.]]), tf.constant([[0., 5., 1.]]), True)
        <tf.Tensor: shape=(1,), dtype=float32, numpy=array([1.], dtype=float32)>
    """
    top = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
    if multi_label:
        return tf.gather(tf.cast(labels, tf.float32), top, axis=-1, batch_dims=1)
    return tf.cast(tf.equal(top, tf.cast(labels, tf.int32)), tf.float32)


def _is_kernel(variable) -> bool:
    return variable.path.endswith("kernel")


def _device_sums(strategy: tf.distribute.Strategy) -> dict:
    """One float32 sum per entry of SUMS, kept per replica and added up when read."""
    with strategy.scope():
        return {
            name: tf.Variable(
                0.0,
                trainable=False,
                name=f"pretrain_{name}_sum",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM,
            )
            for name in SUMS
        }


def make_train_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    global_batch_size: int,
    multi_label: bool = False,
    weight_decay: float = 1e-4,
):
    """Distributed SGD steps, many per call: `train_loop(iterator, stop, num_steps) -> sums`.

    Each replica computes its loss as sum / `global_batch_size` (so the optimizer's all-reduce
    sum is the global mean), adds L2 weight decay on convolution and dense kernels
    (`weight_decay * kernel`, spread over the replicas) and applies the Keras optimizer.

    Returns:
        A `tf.function` of the distributed iterator, `stop` (int32 scalar, 1 when this worker
        was asked to stop) and `num_steps` (int32 scalar), returning {"loss": the sum over
        the steps of each step's global mean loss, "hits": top-1 hits, "examples": examples
        seen, "steps": steps run, "stop": how many replicas were asked to stop (then no step
        runs)}, all as scalars on the host.

    Example:
        >>> loop = make_train_loop(strategy, model, optimizer, global_batch_size=4096)
        >>> sums = loop(iterator, tf.constant(0), tf.constant(20))
        >>> int(sums["steps"])
        20
    """
    num_replicas = strategy.num_replicas_in_sync
    decayed = {id(variable) for variable in model.trainable_variables if _is_kernel(variable)}
    sums = _device_sums(strategy)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = upstream_loss(labels, logits, multi_label)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        if weight_decay:
            gradients = [
                gradient + (weight_decay / num_replicas) * tf.cast(variable.value, gradient.dtype)
                if id(variable) in decayed
                else gradient
                for gradient, variable in zip(gradients, variables, strict=True)
            ]
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        sums["loss"].assign_add(loss)
        sums["hits"].assign_add(tf.reduce_sum(top1_hits(labels, logits, multi_label)))
        sums["examples"].assign_add(tf.cast(tf.shape(per_example)[0], tf.float32))

    def replica_stop(stop):
        # tf.identity gives each replica its own copy (an input tensor shared by the replicas
        # has no device of its own to reduce to).
        context = tf.distribute.get_replica_context()
        return context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.identity(stop), tf.float32)
        )

    def replica_reset():
        for variable in sums.values():
            variable.assign(0.0)

    @tf.function
    def train_loop(iterator, stop, num_steps):
        strategy.run(replica_reset)
        stop_count = strategy.experimental_local_results(strategy.run(replica_stop, args=(stop,)))[
            0
        ]
        steps = tf.where(stop_count > 0, 0, tf.cast(num_steps, tf.int32))
        for _ in tf.range(steps):
            images, labels = next(iterator)
            strategy.run(replica_step, args=(images, labels))
        results = {name: variable.read_value() for name, variable in sums.items()}
        results["steps"] = steps
        results["stop"] = stop_count
        return results

    return train_loop


def make_train_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    global_batch_size: int,
    multi_label: bool = False,
    weight_decay: float = 1e-4,
):
    """One distributed SGD step per call: `train_step(iterator, stop) -> sums`, a
    `make_train_loop` loop of one step ("loss" is that step's global mean loss).

    Example:
        >>> step = make_train_step(strategy, model, optimizer, global_batch_size=4096)
        >>> outputs = step(iterator, tf.constant(0))
    """
    train_loop = make_train_loop(
        strategy,
        model,
        optimizer,
        global_batch_size=global_batch_size,
        multi_label=multi_label,
        weight_decay=weight_decay,
    )
    one = tf.constant(1, tf.int32)

    def train_step(iterator, stop):
        return train_loop(iterator, stop, one)

    return train_step
