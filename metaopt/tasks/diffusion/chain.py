"""A diffusion task's sampling chain as an unrolled problem, so that the ES estimators of ``metaopt.unrolled``
(ES-Single, PES, truncated and full ES) fine-tune its LoRA adapters over truncations of the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaopt.checks import require
from metaopt.diffusion.lora import add_lora, lora_file, set_lora_scale
from metaopt.diffusion.sampler import DDIMChain, ddim_step, denoiser, randn, sample
from metaopt.tasks.diffusion.base import DiffusionTask
from metaopt.tasks.unrolled.problem import ParticleState, UnrolledProblem

__all__ = ["SamplingChain"]


class SamplingChain(UnrolledProblem):
    """The deterministic DDIM chain of ``task`` as an inner problem of horizon T = ``task.num_inference_steps``.

    θ are the LoRA adapters' parameters (rank ``lora_rank``, ``add_lora``'s order, flattened) divided by
    ``theta_scale``: the ES loops' σ and outer learning rate are in units of ``theta_scale`` (the default 1/15
    makes their defaults, σ = 0.3 and Adam's lr 0.05, a perturbation of 0.02 and a step of 3.3e-3 on the
    adapters). A particle's state is its batch of ``task.batch_size`` images x_t; one inner step is one DDIM
    step, one UNet call under the particle's own θ; the step loss is 0 except at the chain's last step, where
    it is −(mean reward of the particle's x₀) (the reward need not be differentiable). A particle that starts
    a chain (step 0) takes x_T from the noise drawn for its data stream at that step, so antithetic partners
    sample the same x_T (common random numbers). A staggered particle that starts at step s > 0 starts from
    the state the initial adapters reach at step s from fresh noise.

    ``reward_queries`` counts the images the reward has scored; ``evaluate`` samples ``eval_samples`` fixed
    noises (seed ``eval_seed``) at θ.
    """

    differentiable = False  # θ is copied into the adapters: TBPTT on the chain is outer=draft (DRaFT-K)
    record_trajectory = False  # θ has tens of thousands of coordinates: no per-step copy for the report

    def __init__(self, task: DiffusionTask, lora_rank: int = 4, lora_alpha: float = 4.0,
                 theta_scale: float = 1 / 15, eval_samples: int = 64, eval_seed: int = 0, seed: int = 0):
        require("task", type(task).__name__, isinstance(task, DiffusionTask),
                "a metaopt.tasks.diffusion.DiffusionTask")
        require("outer.problem.lora_rank", lora_rank, isinstance(lora_rank, int) and lora_rank >= 1,
                "a positive integer")
        require("outer.problem.lora_alpha", lora_alpha, isinstance(lora_alpha, (int, float)) and lora_alpha > 0,
                "a number > 0")
        require("outer.problem.theta_scale", theta_scale,
                isinstance(theta_scale, (int, float)) and theta_scale > 0, "a number > 0")
        require("outer.problem.eval_samples", eval_samples, isinstance(eval_samples, int) and eval_samples > 0,
                "a positive integer")
        self.task = task
        self.horizon = task.num_inference_steps
        self.device = task.device
        self.theta_scale = float(theta_scale)
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.unet = task.pretrained_unet()  # the work, once every argument is checked
        with torch.random.fork_rng(devices=[]):  # the adapters' A matrices are random: seeded, the global RNG kept
            torch.manual_seed(seed)
            self.params = add_lora(self.unet, lora_rank, lora_alpha)
        for p in self.params:
            p.requires_grad_(False)
        self.dim = sum(p.numel() for p in self.params)
        self._theta0 = torch.nn.utils.parameters_to_vector(self.params).detach().clone() / self.theta_scale
        self.chain = DDIMChain.from_scheduler(task.scheduler())
        self.eps = denoiser(self.unet)
        self.images = task.batch_size
        self.eval_noise = torch.randn((eval_samples, *task.image_shape),
                                      generator=torch.Generator().manual_seed(eval_seed)).to(self.device)
        self._stagger_generator = torch.Generator().manual_seed(seed + 1)
        self.reward_queries = 0

    def initial_theta(self) -> Tensor:
        return self._theta0.clone()

    def _load(self, theta: Tensor) -> None:
        torch.nn.utils.vector_to_parameters(theta.to(self.device) * self.theta_scale, self.params)

    def _step(self, x: Tensor, index: int) -> Tensor:
        return ddim_step(self.eps(x, self.chain.timesteps[index]), x, self.chain.alphas[index],
                         self.chain.alphas_prev[index])[0]

    @torch.no_grad()
    def init_state(self, num_particles: int, steps: Tensor | None = None) -> ParticleState:
        steps = (torch.zeros(num_particles, dtype=torch.long, device=self.device) if steps is None
                 else steps.to(self.device).long().clone())
        x = torch.zeros((num_particles, self.images, *self.task.image_shape), device=self.device)
        if bool((steps > 0).any()):
            self._load(self._theta0)
            for i in torch.nonzero(steps > 0).flatten().tolist():
                state = randn(x[i].shape, self._stagger_generator, self.device)
                for index in range(int(steps[i])):
                    state = self._step(state, index)
                x[i] = state
        return {"step": steps, "x": x}

    @torch.no_grad()
    def _unroll(self, state: ParticleState, theta: Tensor, num_steps: int, generator: torch.Generator,
                streams: Tensor, num_streams: int) -> tuple[ParticleState, Tensor, Tensor]:
        x, step = state["x"].clone(), state["step"].clone()
        count = step.shape[0]
        losses = torch.zeros(num_steps, count, device=self.device)
        resets = torch.zeros(num_steps, count, dtype=torch.bool, device=self.device)
        for k in range(num_steps):
            # x_T for every stream (a chain starting now reads its stream's), drawn whether used or not, so
            # that every process draws the same numbers
            fresh = randn((num_streams, self.images, *self.task.image_shape), generator, self.device)
            starting = step == 0
            x[starting] = fresh[streams[starting]]
            for i in range(count):
                self._load(theta[i])
                x[i] = self._step(x[i], int(step[i]))
                if int(step[i]) == self.horizon - 1:
                    losses[k, i] = -self.task.reward(x[i]).mean()
                    self.reward_queries += self.images
            step = step + 1
            resets[k] = step == self.horizon
            step[resets[k]] = 0
        return {"step": step, "x": x}, losses, resets

    @torch.no_grad()
    def samples(self, theta: Tensor, scale: float = 1.0) -> Tensor:
        """Deterministic samples of the evaluation noise with the adapters θ at LoRA scale ``scale``."""
        self._load(theta)
        set_lora_scale(self.unet, scale)
        try:
            return sample(self.eps, self.chain, self.eval_noise)
        finally:
            set_lora_scale(self.unet, 1.0)

    def evaluate(self, theta: Tensor) -> dict[str, float]:
        self._eval_samples = self.samples(theta)
        return {f"eval_{k}": v for k, v in self.task.metrics(self._eval_samples).items()}

    def eval_images(self, theta: Tensor, folder: Path, step: int) -> dict[str, Path]:
        """The samples of the last evaluation as ``samples/eval_<step>.png`` (as the DRaFT loops write them)."""
        from metaopt.outer.diffusion import save_sample_grid

        samples = getattr(self, "_eval_samples", None)
        if samples is None:
            samples = self.samples(theta)
        return {"eval_samples": save_sample_grid(samples, Path(folder) / "samples" / f"eval_{step:06d}.png")}

    def counters(self) -> dict[str, float]:
        """Running totals for the loop's logs: the images the reward has scored in training."""
        return {"reward_queries": float(self.reward_queries)}

    def describe(self, theta: Tensor) -> dict[str, float]:
        return {"lora_norm": float(theta.norm() * self.theta_scale)}

    def state_dict(self) -> dict[str, Any]:
        return {"reward_queries": self.reward_queries, "stagger_generator": self._stagger_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_queries = int(state["reward_queries"])
        self._stagger_generator.set_state(state["stagger_generator"])

    def save(self, theta: Tensor, folder: Path) -> list[Path]:
        """``lora.pt`` (the adapters θ, for ``python -m metaopt.diffusion.mix``) and ``samples.png`` (the
        evaluation samples at LoRA scales 0, 0.5 and 1)."""
        from metaopt.outer.diffusion import plot_lora_scales

        self._load(theta)
        torch.save(lora_file(self.params, self.lora_rank, self.lora_alpha, self.task,
                             reward_queries=self.reward_queries, loop="UnrolledLoop"), Path(folder) / "lora.pt")
        return [plot_lora_scales(lambda scale: self.samples(theta, scale), self.task, [0.0, 0.5, 1.0],
                                 Path(folder) / "samples.png")]
