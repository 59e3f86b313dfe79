"""A JAX reference of the PES problem that ``bench_pes_jax`` times metaopt on (needs ``pip install
"metaopt[bench-jax]"``, i.e. ``jax[cpu]``).

Written the way PES is written in JAX (the PES paper's code, learned_optimization): one ``jax.jit`` of a
whole outer iteration (noise, minibatch indices, ``K`` inner steps, the estimate), ``jax.vmap`` over the
particles, ``jax.lax.scan`` over the steps of the truncation, antithetic pairs ``(θ+ε, θ−ε)`` that share
their minibatches. From the algorithm as stated in ``ALGORITHMS.md`` (PES), not from any other code.

The problem (the one ``bench_pes_jax`` builds in metaopt as a ``TrainingRun``): a 64-32-10 tanh MLP on the
8×8 digits, cross-entropy, minibatches of 128 drawn with replacement, SGD with momentum (torch's: ``b ← μb
+ g``, ``p ← p − lr·b``, the buffer zero at the start) for ``T = 200`` steps, θ = (log lr_start, log
lr_end, logit momentum) with ``lr_t = e^θ₀(T−t)/T + e^θ₁ t/T``; the meta-loss of a step is the training
minibatch loss before its update; truncations of ``K = 10`` steps; particles start staggered over the
horizon (multiples of K) and restart from ``s_0`` when they reach ``T``.

Every particle's state is ``(params, momentum buffers, t, ξ)``, ``ξ`` the PES accumulator. Particle ``i``
and ``i + P`` (of ``N = 2P``) are an antithetic pair. ``truncation`` is the pure function of one outer
iteration given its noise and minibatches (the parity check feeds it metaopt's); ``outer_iteration`` draws
those from a key and calls it, and is what the benchmark jits.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["PESState", "PESProblem", "init_state", "truncation", "outer_iteration", "jitted"]


class PESProblem(NamedTuple):
    """The fixed data of the problem (arrays, so that jit sees them as arguments, not constants)."""

    x_train: jax.Array  # (n, 64) float32
    y_train: jax.Array  # (n,) int32
    initial_params: tuple[jax.Array, ...]  # W1 (32, 64), b1 (32,), W2 (10, 32), b2 (10,): torch's layout


class PESState(NamedTuple):
    params: tuple[jax.Array, ...]  # each (N, ...)
    buffers: tuple[jax.Array, ...]  # momentum buffers, (N, ...)
    step: jax.Array  # (N,) int32, the inner step t ∈ [0, T)
    accumulator: jax.Array  # (N, 3) the PES accumulator ξ


def _mlp_loss(params: tuple[jax.Array, ...], x: jax.Array, y: jax.Array) -> jax.Array:
    w1, b1, w2, b2 = params
    hidden = jnp.tanh(x @ w1.T + b1)
    logits = hidden @ w2.T + b2
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])


def _hyperparameters(theta: jax.Array, step: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    frac = step.astype(theta.dtype) / horizon
    lr = jnp.exp(theta[0]) * (1 - frac) + jnp.exp(theta[1]) * frac
    return lr, jax.nn.sigmoid(theta[2])


def _particle_step(initial_params, horizon, params, buffers, step, theta, x, y):
    """One SGD-momentum step of one particle; the meta-loss is the minibatch loss before the update.
    A particle that reaches the horizon restarts from ``s_0`` (zero buffers, t = 0)."""
    loss, grads = jax.value_and_grad(_mlp_loss)(params, x, y)
    lr, momentum = _hyperparameters(theta, step, horizon)
    buffers = tuple(momentum * b + g for b, g in zip(buffers, grads))
    params = tuple(p - lr * b for p, b in zip(params, buffers))
    step = step + 1
    done = step >= horizon
    params = tuple(jnp.where(done, p0, p) for p0, p in zip(initial_params, params))
    buffers = tuple(jnp.where(done, jnp.zeros_like(b), b) for b in buffers)
    return params, buffers, jnp.where(done, 0, step), loss, done


def init_state(problem: PESProblem, num_particles: int, steps: np.ndarray | jax.Array | None = None) -> PESState:
    """``num_particles`` copies of ``s_0`` at inner steps ``steps`` (default 0), ξ = 0."""
    def stack(a):
        return jnp.broadcast_to(a, (num_particles, *a.shape)).copy()

    steps = jnp.zeros(num_particles, jnp.int32) if steps is None else jnp.asarray(steps, jnp.int32)
    return PESState(tuple(stack(p) for p in problem.initial_params),
                    tuple(jnp.zeros((num_particles, *p.shape), p.dtype) for p in problem.initial_params),
                    steps, jnp.zeros((num_particles, 3), jnp.float32))


def staggered_steps(key: jax.Array, num_particles: int, horizon: int, truncation_length: int) -> jax.Array:
    """Initial steps spread over the horizon, multiples of K, the same for both particles of a pair."""
    pairs = num_particles // 2
    steps = truncation_length * jax.random.randint(key, (pairs,), 0, horizon // truncation_length)
    return jnp.concatenate([steps, steps]).astype(jnp.int32)


def truncation(problem: PESProblem, state: PESState, theta: jax.Array, epsilon: jax.Array, x: jax.Array,
               y: jax.Array, sigma: float, horizon: int) -> tuple[jax.Array, PESState, dict[str, jax.Array]]:
    """One PES outer iteration with given noise ``epsilon`` (N, 3) (already signed per particle) and
    minibatches ``x`` (K, N, B, 64), ``y`` (K, N, B): the estimate ``ĝ = Σ_i ξ_i L_i / (nσ²)`` over the
    ``n`` kept particles, the new state, and the per-step losses and resets (K, N).

    A particle that resets inside the truncation weights the losses up to its reset by ``ξ + ε`` and those
    after it by ``ε``, and carries ``ε`` (nothing if the reset was the last step) into the next ξ; a
    particle whose loss (or its partner's) is not finite is dropped from the estimate and restarted."""
    step_fn = jax.vmap(lambda p, b, t, th, xx, yy: _particle_step(problem.initial_params, horizon, p, b, t, th,
                                                                  xx, yy))
    perturbed = theta[None, :] + epsilon

    def body(carry, batch):
        params, buffers, step = carry
        params, buffers, step, loss, done = step_fn(params, buffers, step, perturbed, *batch)
        return (params, buffers, step), (loss, done)

    (params, buffers, step), (losses, resets) = lax.scan(body, (state.params, state.buffers, state.step), (x, y))
    after = (jnp.cumsum(resets, 0) - resets) > 0
    before_sum = jnp.where(after, 0.0, losses).sum(0)
    after_sum = jnp.where(after, losses, 0.0).sum(0)
    accumulated = state.accumulator + epsilon
    weighted = before_sum[:, None] * accumulated + after_sum[:, None] * epsilon
    finite = jnp.isfinite(losses).all(0)
    half = finite.shape[0] // 2
    pair = finite[:half] & finite[half:]
    kept = jnp.concatenate([pair, pair])
    weighted = jnp.where(kept[:, None], weighted, 0.0)
    count = kept.sum()
    gradient = weighted.sum(0) / (count * sigma**2)
    loss = jnp.where(kept, before_sum + after_sum, 0.0).sum() / count

    accumulator = jnp.where(resets.any(0)[:, None], epsilon, accumulated)
    accumulator = jnp.where(resets[-1][:, None] | ~kept[:, None], 0.0, accumulator)
    # dropped particles restart from s_0
    params = tuple(jnp.where(kept.reshape(-1, *([1] * (p.ndim - 1))), p, p0[None])
                   for p, p0 in zip(params, problem.initial_params))
    buffers = tuple(jnp.where(kept.reshape(-1, *([1] * (b.ndim - 1))), b, 0.0) for b in buffers)
    step = jnp.where(kept, step, 0)
    info = {"loss": loss, "losses": losses, "resets": resets, "particle_estimates": weighted / sigma**2}
    return gradient, PESState(params, buffers, step, accumulator), info


def outer_iteration(problem: PESProblem, state: PESState, theta: jax.Array, key: jax.Array, sigma: float,
                    horizon: int, truncation_length: int, batch_size: int):
    """Draw ε (one per pair, ± per particle) and K minibatches per pair from ``key``, then ``truncation``."""
    num_particles = state.step.shape[0]
    pairs = num_particles // 2
    noise_key, data_key = jax.random.split(key)
    epsilon = sigma * jax.random.normal(noise_key, (pairs, theta.shape[0]), theta.dtype)
    epsilon = jnp.concatenate([epsilon, -epsilon])
    index = jax.random.randint(data_key, (truncation_length, pairs, batch_size), 0, problem.x_train.shape[0])
    index = jnp.concatenate([index, index], axis=1)  # partners read the same minibatch
    gradient, state, info = truncation(problem, state, theta, epsilon, problem.x_train[index],
                                       problem.y_train[index], sigma, horizon)
    return gradient, state, info


def jitted(sigma: float, horizon: int, truncation_length: int, batch_size: int) -> Any:
    """``jit(outer_iteration)`` with the constants bound: ``(problem, state, theta, key) -> (ĝ, state, info)``."""
    def step(problem, state, theta, key):
        return outer_iteration(problem, state, theta, key, sigma, horizon, truncation_length, batch_size)

    return jax.jit(step, donate_argnums=(1,))


def jitted_truncation(sigma: float, horizon: int) -> Any:
    """``jit(truncation)``: ``(problem, state, theta, epsilon, x, y) -> (ĝ, state, info)``."""
    return jax.jit(lambda problem, state, theta, epsilon, x, y: truncation(problem, state, theta, epsilon, x, y,
                                                                           sigma, horizon))
