"""FusedMomentumSGD: Keras' SGD updates through one fused op per variable, and Keras' own update
where that op does not apply. (Under MirroredStrategy it is exercised by
test_finetune.py::test_mirrored_strategy_on_two_cpus_gives_the_update_of_one_device.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import bit_tf
from bit_tf.training.optimizers import FusedMomentumSGD


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            bit_tf.StandardizedConv2D(8, 3, padding="same"),
            bit_tf.GroupNormalization(groups=4),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )


def batches(count=4):
    generator = np.random.default_rng(1)
    images = generator.uniform(size=(count, 16, 8, 8, 3)).astype("float32")
    labels = generator.integers(0, 5, size=(count, 16))
    return list(zip(images, labels, strict=True))


def train(optimizer, model_seed=0):
    model = small_model(model_seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    for images, labels in batches():
        model.train_on_batch(images, labels)
    return model


@pytest.mark.parametrize("nesterov", [False, True])
def test_updates_equal_keras_sgd(nesterov):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.5, 0.05])
    fused = train(FusedMomentumSGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov))
    reference = train(keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov))
    for ours, theirs in zip(fused.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(fused.get_weights(), small_model().get_weights(), strict=True)
    ]
    assert all(moved), "every variable should have moved"
    for ours, theirs in zip(fused.optimizer.variables, reference.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_fused_op_is_what_runs(nesterov):
    model = small_model()
    optimizer = FusedMomentumSGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    optimizer.build(model.trainable_variables)

    @tf.function
    def apply(gradients):
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    gradients = [tf.ones_like(variable) for variable in model.trainable_variables]
    graph = apply.get_concrete_function(gradients).graph.as_graph_def()
    # The optimizer's update may sit in a nested function of the graph's library.
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    operations = {node.op for node in nodes}
    assert "ResourceApplyKerasMomentum" in operations


def test_sparse_gradients_take_keras_update():
    def run(optimizer):
        keras.utils.set_random_seed(0)
        embedding = keras.layers.Embedding(10, 4)
        embedding.build((None,))
        optimizer.build(embedding.trainable_variables)
        for step in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(embedding(tf.constant([step, 7])) ** 2)
            gradients = tape.gradient(loss, embedding.trainable_variables)
            assert isinstance(gradients[0], tf.IndexedSlices)
            optimizer.apply_gradients(zip(gradients, embedding.trainable_variables, strict=True))
        return embedding.get_weights()[0]

    np.testing.assert_allclose(
        run(FusedMomentumSGD(learning_rate=0.1, momentum=0.9)),
        run(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)),
        rtol=1e-6,
    )


def test_a_saved_model_reloads_with_the_optimizer_and_its_momentum(tmp_path):
    model = train(FusedMomentumSGD(learning_rate=0.1, momentum=0.9))
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.optimizer) is FusedMomentumSGD
    for saved, loaded in zip(model.optimizer.variables, reloaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))
