"""metaopt's PES and the JAX reference of bench_pes_jax compute the same estimate: fed the same
perturbations, minibatches and (staggered, resetting) start, the two agree to float32 rounding, with the
batched MLP path and with vmap. Skipped without jax (``pip install ".[bench-jax]"``); without it the
benchmark says so instead of failing."""

import pytest

from experiments.benchmarks import bench_pes_jax


@pytest.mark.parametrize("batched_mlp", [True, False])
def test_pes_in_metaopt_and_in_jax_give_the_same_estimate_on_shared_noise(batched_mlp, one_thread):
    pytest.importorskip("jax")
    result = bench_pes_jax.shared_noise_check(num_particles=8, truncations=3, batched_mlp=batched_mlp)
    assert result["relative_gradient_error"] < 1e-3, result
    assert result["loss_error"] < 1e-4, result


def test_the_benchmark_skips_its_jax_rows_with_a_message_when_jax_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(bench_pes_jax, "jax_available", lambda: False)
    (table,) = bench_pes_jax.run(quick=True)
    assert "jax is not installed" in table["rows"][0][0]
    assert "bench-jax" in capsys.readouterr().err
