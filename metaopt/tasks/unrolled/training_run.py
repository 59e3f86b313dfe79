"""A whole training run of a supervised task as an unrolled inner problem whose outer parameters are
the optimizer's hyperparameters (learning rate and its schedule, momentum, weight decay, …)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from metaopt.checks import require
from metaopt.optim._compiled import CompiledStep
from metaopt.tasks.supervised import SupervisedTask
from metaopt.tasks.unrolled.batched_mlp import BatchedMLP
from metaopt.tasks.unrolled.tuning import TunedHyperparameters, TunedRun, optimizer_spec

__all__ = ["TrainingRun", "stream_batches"]


def stream_batches(task: SupervisedTask, split: str, batch_size: int, generator: torch.Generator | None,
                   streams: torch.Tensor, num_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatches (N, B, …) of ``split``, drawn with replacement: one per data stream, each particle
    reading its stream's (``streams`` (N,)), so that antithetic partners see the same data.

    Each stream's examples are gathered once with ``index_select`` on the flattened indices, several
    times faster on CPU than advanced indexing with an (N, B) index; the particles then copy whole
    minibatches."""
    inputs, targets = getattr(task.data, split)
    index = torch.randint(len(inputs), (num_streams, batch_size), generator=generator)
    index = index.to(task.device).flatten()

    def per_particle(data):
        per_stream = data.index_select(0, index).view(num_streams, batch_size, *data.shape[1:])
        return per_stream.index_select(0, streams)

    return per_particle(inputs), per_particle(targets)


def stream_minibatches(task: SupervisedTask, split: str, batch_size: int, generator: torch.Generator | None,
                       streams: torch.Tensor, num_streams: int,
                       out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The minibatches ``(len(streams), B, …)`` of the data streams ``streams``: the same random numbers
    and examples as ``stream_batches`` (which copies them for every particle), one gather in all
    (into ``out``'s tensors, of ``len(streams)·B`` rows, if given)."""
    inputs, targets = getattr(task.data, split)
    index = torch.randint(len(inputs), (num_streams, batch_size), generator=generator)
    index = index.to(task.device)[streams].flatten()
    shape = (len(streams), batch_size)
    gathered_inputs = torch.index_select(inputs, 0, index, out=None if out is None else out[0])
    gathered_targets = torch.index_select(targets, 0, index, out=None if out is None else out[1])
    return gathered_inputs.view(*shape, *inputs.shape[1:]), gathered_targets.view(*shape, *targets.shape[1:])


def _take(value: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of every tensor of a particle state (dicts and lists of ``(N, …)`` tensors)."""
    if isinstance(value, dict):
        return {k: _take(v, index) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, index) for v in value)
    return value.index_select(0, index)


class TrainingRun(TunedRun):
    """Train ``task``'s model for ``horizon`` minibatch steps with ``optimizer``'s functional core.

    ``optimizer`` is any optimizer with a spec (``metaopt.optim.specs``): a factory such as
    ``instantiate(cfg.optimizer)`` (``functools.partial(torch.optim.AdamW, lr=…)``), a class, or a spec
    name. The outer parameters θ are the unconstrained hyperparameters named in ``tuned`` (see
    ``TunedHyperparameters``: ``None`` tunes the optimizer's natural knobs from the values the factory
    carries; log for lr/ε/weight decay, logit for momentum/betas, the angle as it is). With
    ``schedule="linear"`` the learning rate is ``lr_t = e^{θ_start}(T−t)/T + e^{θ_end}t/T`` (the PES
    paper's schedule), two parameters. Names in ``per_layer`` get one parameter per layer (module holding
    parameters). The optimizer's other arguments stay fixed (``fixed`` adds more; a key both tuned and
    fixed is an error).

    The meta-loss of a step is the loss after the update on a minibatch of ``meta_split`` ("val", the
    default, or "train": then the training minibatch loss before the update, at no extra cost). All
    particles are trained at once with ``torch.func.vmap`` over ``functional_call``; every inner
    problem starts from the same ``s_0`` (weights initialised with ``init_seed``, fresh optimizer state).
    Minibatches are drawn with replacement, one per data stream and step.

    When nothing differentiates through the steps (the ES estimators, ``evaluate_many``) and the model is
    a plain MLP (an ``nn.Sequential`` of ``Linear`` layers and Tanh/ReLU/Sigmoid/GELU activations, as
    ``metaopt.tasks.MLP``) with the task's own loss, the gradients come from ``BatchedMLP``: batched
    matmuls with the particles as the batch dimension and a hand-written backward, no autograd graph,
    each stream's minibatch gathered once and shared by the particles that read it (antithetic partners)
    through one matmul for the first layer. ``batched_mlp=False`` keeps ``vmap`` for every model (the
    results agree to float32 rounding; see ``BatchedMLP``).

    ``compile=True`` runs each inner step of the ES estimators (gradient, update and meta-loss of all
    particles) through ``torch.compile``, which fuses the elementwise work around the batched matmuls
    (bias, activation, their backward, the optimizer update): the first truncation compiles, once per
    instance and particle count (seconds to a minute on a CPU), and if compiling fails the steps run
    eagerly, with a warning. TBPTT, which differentiates through the steps, and ``evaluate_many`` always
    run eagerly.
    """

    def __init__(self, task: SupervisedTask, optimizer: str | Callable = "sgd",
                 tuned: Mapping[str, float] | None = None, schedule: str = "constant",
                 per_layer: Sequence[str] = (), fixed: Mapping[str, Any] | None = None, horizon: int = 1000,
                 meta_split: str = "val", batch_size: int | None = None, init_seed: int = 0,
                 compile: bool = False, batched_mlp: bool = True):
        spec, optimizer_kwargs = optimizer_spec(optimizer, "a TrainingRun (ES/TBPTT outer loops)")
        require("meta_split", meta_split, meta_split in ("train", "val"), "'train' or 'val'")
        require("horizon", horizon, isinstance(horizon, int) and horizon > 0, "a positive integer")
        self.task = task
        self.spec = spec
        self.horizon = horizon
        self.meta_split = meta_split
        self.batch_size = batch_size or task.batch_size
        self.device = task.device

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = task.build_model()
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.initial_params = tuple(p.detach().clone() for p in self.model.parameters())
        layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in self.param_names))
        self.tuning = TunedHyperparameters(spec, optimizer_kwargs, tuned, schedule, per_layer, layers,
                                           [layers.index(n.rsplit(".", 1)[0]) for n in self.param_names],
                                           horizon, fixed)
        initial_opt, self._opt_spec = tree_flatten(spec.init(self.initial_params, self.fixed))
        self.initial_opt = tuple(initial_opt)
        self._forward = vmap(self._forward_one)
        self._losses = vmap(self._loss_one)
        self._gradients = vmap(grad_and_value(self._loss_one))
        self._update = vmap(self._update_one)
        # the task's own loss (cross-entropy, half MSE), which BatchedMLP writes out
        own_loss = type(task).loss is SupervisedTask.loss
        self._batched = BatchedMLP.from_model(self.model, task.kind) if batched_mlp and own_loss else None
        step = self._compilable_batched_step if self._batched is not None else self._step
        self._compiled_step = CompiledStep(step) if compile else None
        self._data_buffers: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- dynamics --------------------------------------------------------------------------------
    def _forward_one(self, params: tuple[torch.Tensor, ...], inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.param_names, params)), (inputs,))

    def _update_one(self, params, grads, opt_leaves, hyper):
        update = functools.partial(self.spec.update, **self.fixed)
        params, opt_state = update(params, grads, tree_unflatten(list(opt_leaves), self._opt_spec), **hyper)
        return params, tuple(tree_flatten(opt_state)[0])

    def _loss_one(self, params: tuple[torch.Tensor, ...], inputs: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        """``task.loss`` of one particle on its minibatch (vmapped over the particles)."""
        outputs = self._forward_one(params, inputs)
        if self.task.kind == "classification":
            # task.loss's cross-entropy with the class axis first (equal up to rounding, ~1e-7):
            # log_softmax over a short last axis (10 classes) is several times slower on CPU than over
            # the long batch axis.
            log_probs = F.log_softmax(outputs.T, dim=0)
            return -log_probs.gather(0, targets[None]).mean()
        return self.task.loss(outputs, targets)

    def particle_losses(self, params: Sequence[torch.Tensor], inputs: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
        """``task.loss`` of every particle (N,) on its own minibatch (N, B, …)."""
        return self._losses(tuple(params), inputs, targets)

    def _train_step(self, params, opt, hyper, inputs, targets):
        """One step of every particle: its gradient (``vmap`` of ``torch.func.grad``), then the vmapped update.

        ``vmap(grad)`` differentiates each particle's loss with the unbatched backward formulas, which
        return the weight gradients in the weights' own (contiguous) layout and pick the cheaper matmul
        for them; batched autograd through the vmapped forward returns them transposed (``bmm``'s
        backward), so that every elementwise op of the update mixes two layouts. When grad mode is on
        (TBPTT), the gradients keep their graph so that θ's effect flows through the update.
        """
        grads, loss = self._gradients(tuple(params), inputs, targets)
        params, opt = self._update(tuple(params), grads, opt, hyper)
        return params, opt, loss

    def _step(self, params, opt, hyper, inputs, targets, meta_inputs, meta_targets):
        """One inner step of every particle, the unit that ``compile=True`` compiles: the training step,
        then the meta-loss on ``meta_inputs`` (None: the training loss before the update)."""
        params, opt, meta = self._train_step(params, opt, hyper, inputs, targets)
        if meta_inputs is not None:
            meta = self.particle_losses(params, meta_inputs, meta_targets)
        return params, opt, meta

    def _batched_step(self, params, opt, hyper, inputs, targets, meta_inputs, meta_targets, reuse=True):
        """``_step`` by ``BatchedMLP``: minibatches per stream ``(S, B, …)``, particles stream-major;
        ``reuse``: its intermediates in kept buffers (eager)."""
        grads, loss = self._batched.loss_and_grad(params, inputs, targets, reuse=reuse)
        params, opt = self._update(tuple(params), grads, opt, hyper)
        if meta_inputs is not None:
            loss = self._batched.losses(params, meta_inputs, meta_targets, reuse=reuse)
        return params, opt, loss

    def _compilable_batched_step(self, params, opt, hyper, inputs, targets, meta_inputs, meta_targets):
        """``_batched_step`` without kept buffers, for ``torch.compile`` (which plans its own)."""
        return self._batched_step(params, opt, hyper, inputs, targets, meta_inputs, meta_targets, reuse=False)

    def _batches(self, split: str, generator: torch.Generator | None, streams: torch.Tensor,
                 num_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
        return stream_batches(self.task, split, self.batch_size, generator, streams, num_streams)

    def _unroll(self, state, theta, num_steps, generator, streams, num_streams):
        return self._run(state, theta, num_steps, generator, streams, num_streams, reset=True, compiled=True)

    def _run(self, state, theta, num_steps, generator, streams, num_streams, reset, compiled=False):
        """``num_steps`` steps of every particle; ``compiled``: by the compiled step, if there is one."""
        step_function = self._step
        if compiled and self._compiled_step is not None and not torch.is_grad_enabled():
            step_function = self._compiled_step
        if self._batched is not None and not torch.is_grad_enabled():
            return self._run_batched(state, theta, num_steps, generator, streams, num_streams, reset,
                                     step_function if step_function is self._compiled_step else self._batched_step)

        def one_step(params, opt, hyper):
            inputs, targets = self._batches("train", generator, streams, num_streams)
            meta_inputs = meta_targets = None
            if self.meta_split == "val":
                meta_inputs, meta_targets = self._batches("val", generator, streams, num_streams)
            return step_function(params, opt, hyper, inputs, targets, meta_inputs, meta_targets)

        return self._advance(state, theta, num_steps, one_step, reset)

    def _run_batched(self, state, theta, num_steps, generator, streams, num_streams, reset, step_function):
        """``_run`` by ``BatchedMLP``: the particles reordered stream-major for the truncation (sorted by
        stream; ``C`` copies of each of ``S`` streams when every stream has as many particles, else one
        minibatch per particle), and back at its end."""
        order = torch.argsort(streams, stable=True)
        ordered = streams[order]
        groups, counts = torch.unique_consecutive(ordered, return_counts=True)
        if not bool((counts == counts[0]).all()):
            groups = ordered  # uneven: each particle its own copy of its stream's minibatch
        permuted = not bool((order == torch.arange(len(order), device=order.device)).all())
        if permuted:
            state, theta = _take(state, order), theta[order]

        def batch(split):
            out = None
            if step_function is self._batched_step:  # eager: gather into kept buffers
                data = getattr(self.task.data, split)
                key = (split, len(groups) * self.batch_size)
                out = self._data_buffers.get(key)
                if out is None:
                    if len(self._data_buffers) >= 16:
                        self._data_buffers.clear()
                    out = self._data_buffers[key] = tuple(
                        torch.empty(key[1], *t.shape[1:], dtype=t.dtype, device=t.device) for t in data)
            return stream_minibatches(self.task, split, self.batch_size, generator, groups, num_streams, out)

        def one_step(params, opt, hyper):
            inputs, targets = batch("train")
            meta_inputs = meta_targets = None
            if self.meta_split == "val":
                meta_inputs, meta_targets = batch("val")
            return step_function(params, opt, hyper, inputs, targets, meta_inputs, meta_targets)

        state, losses, resets = self._advance(state, theta, num_steps, one_step, reset)
        if permuted:
            inverse = torch.argsort(order)
            state, losses, resets = _take(state, inverse), losses[:, inverse], resets[:, inverse]
        return state, losses, resets

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_many(self, thetas: torch.Tensor, seed: int = 0) -> list[dict[str, float]]:
        """Train one model per row of ``thetas`` (M, dim) for a whole inner problem (all at once, same
        data), then report each one's ``meta_objective`` (mean meta-loss over the run) and the full-split
        losses and accuracies of ``task.evaluate``."""
        num = thetas.shape[0]
        generator = torch.Generator().manual_seed(seed)
        streams = torch.zeros(num, dtype=torch.long, device=self.device)
        state, losses, _ = self._run(self.init_state(num), thetas.to(self.device), self.horizon, generator,
                                     streams, 1, reset=False)
        results = [{"meta_objective": float(v)} for v in losses.mean(0)]
        for split in ("train", "val", "test"):
            inputs, targets = self.task.eval_split(split)
            if self._batched is not None:
                outputs = self._batched.outputs(tuple(state["params"]), inputs[None])
            else:
                outputs = self._forward(tuple(state["params"]), inputs.expand(num, *inputs.shape))
            for i in range(num):
                results[i].update(self.task.metrics(outputs[i], targets, split))
        return results
