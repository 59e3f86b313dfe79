"""metaopt's PES and the JAX reference of bench_pes_jax compute the same estimate: fed the same
perturbations, minibatches and (staggered, resetting) start, the two agree to float32 rounding.
Skipped without jax (``pip install ".[bench-jax]"``)."""

import pytest

pytest.importorskip("jax")

from experiments.benchmarks.bench_pes_jax import shared_noise_check  # noqa: E402


@pytest.mark.parametrize("batched_mlp", [True, False])
def test_pes_in_metaopt_and_in_jax_give_the_same_estimate_on_shared_noise(batched_mlp):
    result = shared_noise_check(num_particles=8, truncations=3, batched_mlp=batched_mlp)
    assert result["relative_gradient_error"] < 1e-3, result
    assert result["loss_error"] < 1e-4, result
