from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metaopt.unrolled import UnrolledProblem


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small batched matmuls: one thread is faster, and steadier on a loaded machine."""


@pytest.fixture(scope="session")
def digits_task():
    return instantiate(OmegaConf.load(Path(__file__).resolve().parents[2] / "metaopt/conf/task/digits_mlp.yaml"))


class LinearQuadratic(UnrolledProblem):
    """``s_{t+1} = A s_t + B θ``, loss ``½‖s_{t+1} − c‖²`` every step, horizon ``T``: a quadratic meta-loss.

    Its Gaussian-smoothed meta-objective differs from the true one by a constant, so unbiased estimators
    have the exact autograd derivative as their mean.
    """

    def __init__(self, horizon=6, state_dim=4, dim=3, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.horizon = horizon
        self.dim = dim
        q, _ = torch.linalg.qr(torch.randn(state_dim, state_dim, generator=gen, dtype=torch.float64))
        self.A = (0.9 * q).float()
        self.B = torch.randn(state_dim, dim, generator=gen) * 0.5
        self.c = torch.randn(state_dim, generator=gen)
        self.s0 = torch.randn(state_dim, generator=gen)

    def initial_theta(self):
        return torch.tensor([0.3, -0.2, 0.5])[: self.dim]

    def init_state(self, num_particles, steps=None):
        if steps is None:
            steps = torch.zeros(num_particles, dtype=torch.long)
        return {"step": steps.clone(), "s": self.s0.expand(num_particles, -1).clone()}

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        s, step = state["s"], state["step"]
        losses, resets = [], []
        for _ in range(num_steps):
            s = s @ self.A.T + theta @ self.B.T
            losses.append(0.5 * ((s - self.c) ** 2).sum(1))
            step = step + 1
            done = step >= self.horizon
            resets.append(done)
            s = torch.where(done[:, None], self.s0, s)
            step = torch.where(done, torch.zeros_like(step), step)
        return {"step": step, "s": s}, torch.stack(losses), torch.stack(resets)

    def truncation_losses(self, theta, truncation_length):
        """``L^(τ)`` of each truncation of one inner problem, differentiable in ``theta`` (the reference)."""
        _, losses, _ = self._unroll(self.init_state(1), theta[None], self.horizon, None, None, 0)
        return losses[:, 0].reshape(-1, truncation_length).sum(1)


@pytest.fixture
def linear_quadratic():
    return LinearQuadratic()
