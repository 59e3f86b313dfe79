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


def one_particle(problem, theta: torch.Tensor, steps: int, seed: int) -> dict:
    """The state of one particle of the vectorized ``problem`` at ``theta`` after ``steps`` steps (stream 0,
    minibatches drawn from ``seed``)."""
    state, _, _ = problem._run(problem.init_state(1), theta[None], steps, torch.Generator().manual_seed(seed),
                               torch.zeros(1, dtype=torch.long), 1, reset=False)
    return state


def torch_replay(problem, make_optimizer, steps: int, seed: int, set_lrs=None):
    """``problem.model`` from its initial parameters trained by the torch optimizer ``make_optimizer(params)``
    on the minibatches ``one_particle`` draws from ``seed``; ``set_lrs(optimizer, t)`` before step ``t``.
    Returns the model (its ``.grad`` of the last step kept)."""
    model = problem.model
    with torch.no_grad():
        for p, value in zip(model.parameters(), problem.initial_params):
            p.copy_(value)
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = problem.task.data.train
    for t in range(steps):
        if set_lrs is not None:
            set_lrs(optimizer, t)
        index = torch.randint(len(inputs), (1, problem.batch_size), generator=generator)[0]
        optimizer.zero_grad()
        problem.task.loss(model(inputs[index]), targets[index]).backward()
        optimizer.step()
    return model


def assert_particle_equals(state: dict, model) -> None:
    for p, value in zip(model.parameters(), state["params"]):
        torch.testing.assert_close(value[0], p.detach(), rtol=1e-5, atol=1e-6)


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
