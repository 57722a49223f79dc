"""bit_tf.kernels.jax (GroupNorm(+ReLU) for the JAX backend) gives the formula's values and
gradients. Runs under KERAS_BACKEND=jax (tests/test_jax_backend.py reruns it there)."""

import os

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
    pytest.skip("bit_tf.kernels.jax runs on the JAX backend", allow_module_level=True)

jax = pytest.importorskip("jax")
jnp = jax.numpy

from bit_tf import kernels  # noqa: E402
from bit_tf.kernels import jax as jax_kernels  # noqa: E402


def _reference_group_norm(x, gamma, beta, groups, epsilon, relu):
    """The formula over a 5-D grouped view (two-pass moments), differentiated by autodiff."""
    batch, height, width, channels = x.shape
    grouped = x.reshape(batch, height, width, groups, channels // groups)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    variance = jnp.square(grouped - mean).mean(axis=(1, 2, 4), keepdims=True)
    normalized = ((grouped - mean) * jax.lax.rsqrt(variance + epsilon)).reshape(x.shape)
    y = normalized * gamma + beta
    return jnp.maximum(y, 0.0) if relu else y


def _inputs(shape, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=shape).astype("float32"))
    gamma = jnp.asarray(rng.uniform(0.5, 1.5, size=shape[-1]).astype("float32"))
    beta = jnp.asarray(rng.normal(size=shape[-1]).astype("float32"))
    upstream = jnp.asarray(rng.normal(size=shape).astype("float32"))
    return x, gamma, beta, upstream


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 3, 64), (3, 8, 8, 32), (1, 2, 2, 128)])
def test_values_and_gradients_match_the_formula(shape, relu):
    x, gamma, beta, upstream = _inputs(shape, sum(shape))

    def fast_function(x, gamma, beta):
        return jax_kernels.group_norm(x, gamma, beta, groups=32, epsilon=1e-5, relu=relu)

    def reference_function(x, gamma, beta):
        return _reference_group_norm(x, gamma, beta, 32, 1e-5, relu)

    got, got_backward = jax.vjp(jax.jit(fast_function), x, gamma, beta)
    want, want_backward = jax.vjp(reference_function, x, gamma, beta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, got_gradient, want_gradient in zip(
        ("x", "gamma", "beta"), got_backward(upstream), want_backward(upstream), strict=True
    ):
        scale = float(jnp.abs(want_gradient).max())
        np.testing.assert_allclose(
            got_gradient, want_gradient, rtol=1e-4, atol=2e-5 * scale, err_msg=name
        )


def test_bfloat16_inputs_give_bfloat16_outputs_from_float32_statistics():
    x, gamma, beta, _ = _inputs((2, 4, 4, 64), 7)
    # A large common offset, which statistics in bfloat16 could not resolve.
    x16 = (x + 300.0).astype(jnp.bfloat16)
    got = jax_kernels.group_norm(x16, gamma, beta, groups=32, epsilon=1e-5)
    want = _reference_group_norm(x16.astype(jnp.float32), gamma, beta, 32, 1e-5, False)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        got.astype(jnp.float32), want, atol=0.05 * float(jnp.abs(want).max())
    )


def test_channels_not_divisible_by_groups_are_named():
    x = jnp.ones((1, 2, 2, 48))
    with pytest.raises(ValueError, match=r"groups=32.*\(1, 2, 2, 48\)"):
        kernels.group_norm(x, jnp.ones(48), jnp.zeros(48), groups=32, epsilon=1e-5)


def test_the_jax_backend_chooses_the_jax_kernels():
    assert kernels.implementation() is jax_kernels
    with kernels.configured(fused=False):
        assert kernels.implementation().__name__ == "bit_tf.kernels.reference"
