"""Differentiate through k steps of any optimizer that has a spec, on any ``nn.Module``.

``DifferentiableOptimizer`` holds a model's parameters as plain tensors and advances them with the
optimizer's pure functional core (``spec.update``), so a loss measured after k steps is a differentiable
function of the initial parameters (MAML) and of the hyperparameters (hypergradients)::

    lr = torch.tensor(0.1, requires_grad=True)
    inner = DifferentiableOptimizer(model, torch.optim.SGD, lr=lr, momentum=0.9)
    for x, y in support_batches:
        inner.step(loss_fn(inner(x), y))
    loss_fn(inner(x_val), y_val).backward()     # d/d lr and d/d the model's initial parameters

References:
    Finn, Abbeel & Levine (2017), Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks,
    ICML (Algorithm 2; first-order MAML, Section 5.2).
    Maclaurin, Duvenaud & Adams (2015), Gradient-based Hyperparameter Optimization through Reversible
    Learning, ICML (hypergradients through unrolled SGD with momentum).
    Grefenstette et al. (2019), Generalized Inner Loop Meta-Learning (``higher.innerloop_ctx``), and
    Ren et al. (2022), TorchOpt (``MetaSGD``/``MetaAdam``): the user APIs this one follows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metaopt.optim.specs import SPECS, OptimizerSpec, factory_kwargs, spec_for

__all__ = ["DifferentiableOptimizer"]


class DifferentiableOptimizer:
    """k differentiable steps of ``optimizer`` on a functional copy of ``module``.

    Args:
        module: any ``nn.Module``; it is never mutated. Its trainable parameters (``requires_grad``)
            are the initial parameters, kept in the graph, so a loss after k steps back-propagates into
            ``module``'s parameters (``copy_initial_weights=False`` in higher). Frozen parameters and
            buffers (copied, so that BatchNorm's running statistics update the copies) are constants.
        optimizer: a ``torch.optim`` (or metaopt) class with a spec, a ``functools.partial`` of one
            (its keywords are used), an instance (the hyperparameters of its single parameter group;
            its state is not copied) or a spec name (``"adam"``). ``metaopt.optim.register`` adds one.
        first_order: treat each inner gradient as a constant (``create_graph=False``): first-order MAML,
            which drops the second-order terms ``∂²L/∂θ²`` and ``∂²L/∂θ∂λ``.
        **hyperparameters: the class's keyword arguments (``lr``, ``momentum``, ``betas``, …, or the
            functional names ``beta1``/``beta2``); unset ones take the class's defaults. A value may be a
            number, a 0-d tensor that requires grad, or a list with one per trainable parameter
            tensor (per-layer learning rates), in ``named_parameters()`` order.

    Second order through Adam, RMSprop or Adagrad: a gradient element that is exactly 0 (a dead ReLU, an
    unused weight) makes the meta-gradient NaN, since the cores take √v with no ε inside the root
    (torchopt's ``eps_root``); ``first_order=True`` or a smooth activation avoids it.
    """

    def __init__(self, module: nn.Module, optimizer: Any, *, first_order: bool = False, **hyperparameters: Any):
        spec = spec_for(optimizer)
        if spec is None:
            supported = ", ".join(sorted(f"{s.optimizer.__module__}.{s.optimizer.__name__}" for s in SPECS.values()))
            raise ValueError(f"{_name(optimizer)} has no functional core, so it cannot be differentiated through; "
                             f"supported: {supported} (metaopt.optim.register adds one)")
        self.spec: OptimizerSpec = spec
        self.module = module
        self.first_order = bool(first_order)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names: tuple[str, ...] = tuple(n for n, _ in named)
        self.params: tuple[torch.Tensor, ...] = tuple(p for _, p in named)
        self.constants: dict[str, torch.Tensor] = {
            **{n: p.detach() for n, p in module.named_parameters() if not p.requires_grad},
            **{n: b.clone() for n, b in module.named_buffers()},
        }
        self.hyperparameters: dict[str, Any] = _hyperparameters(spec, optimizer, hyperparameters, len(self.params))
        self.state = spec.init(self.params, self.hyperparameters)
        self.steps = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` with the current parameters (``torch.func.functional_call``)."""
        tensors = {**self.constants, **dict(zip(self.names, self.params))}
        return torch.func.functional_call(self.module, tensors, args, kwargs, strict=False)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return zip(self.names, self.params)

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self.params)

    def step(self, loss: torch.Tensor | None = None, grads: Any = None) -> tuple[torch.Tensor, ...]:
        """One optimizer step on ``loss`` (or on the given ``grads``, one per parameter); returns the new
        parameters. The gradients keep their graph (``create_graph=True``) unless ``first_order``."""
        if grads is None:
            if loss is None:
                raise ValueError("step needs a loss or grads")
            grads = torch.autograd.grad(loss, self.params, create_graph=not self.first_order, retain_graph=True,
                                        allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads))
        else:
            grads = tuple(grads)
            if len(grads) != len(self.params):
                raise ValueError(f"step got {len(grads)} gradients for {len(self.params)} parameters")
            if self.first_order:
                grads = tuple(g.detach() for g in grads)
        self.params, self.state = self.spec.update(self.params, grads, self.state, **self.hyperparameters)
        self.steps += 1
        return self.params

    def detach_(self) -> DifferentiableOptimizer:
        """Cut the graph behind the current parameters and state (truncated back-propagation): later
        losses no longer reach the earlier steps, the initial parameters or the hyperparameters' past
        uses. The hyperparameters themselves stay as they are."""
        self.params = tuple(p.detach().requires_grad_(p.requires_grad) for p in self.params)
        self.state = _map_tensors(lambda t: t.detach(), self.state)
        return self

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={_short(v)}" for k, v in self.hyperparameters.items())
        return (f"DifferentiableOptimizer({type(self.module).__name__}, {self.spec.optimizer.__name__}, {hyper}, "
                f"first_order={self.first_order}, steps={self.steps})")


def _name(optimizer: Any) -> str:
    target = getattr(optimizer, "func", optimizer)
    if isinstance(target, str):
        return repr(target)
    if not isinstance(target, type):
        target = type(target)
    return f"{target.__module__}.{target.__name__}"


def _defaults(spec: OptimizerSpec) -> dict[str, Any]:
    """The class's own defaults for its hyperparameters and flags (torch's, not the cores')."""
    known = {*spec.hyperparameters, *spec.flags, *spec.pairs, *spec.constants}
    signature = inspect.signature(spec.optimizer.__init__)
    return {k: p.default for k, p in signature.parameters.items()
            if k in known and p.default is not inspect.Parameter.empty}


def _given(optimizer: Any) -> dict[str, Any]:
    if isinstance(optimizer, torch.optim.Optimizer):
        if len(optimizer.param_groups) != 1:
            raise ValueError(f"{type(optimizer).__name__} instance has {len(optimizer.param_groups)} parameter groups; "
                             "pass the class and per-tensor hyperparameters instead")
        return {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    return factory_kwargs(optimizer)


def _hyperparameters(spec: OptimizerSpec, optimizer: Any, given: Mapping[str, Any], count: int) -> dict[str, Any]:
    """The functional core's keyword arguments: the class's defaults, then the factory's or instance's,
    then ``given``; checked against the spec's domains, per-tensor lists element by element."""
    merged = {**_defaults(spec), **_given(optimizer), **given}
    # A Hydra partial carries ListConfig betas: a sequence, but neither list nor tuple.
    merged = {k: list(v) if isinstance(v, Sequence) and not isinstance(v, (str, list, tuple)) else v
              for k, v in merged.items()}
    known = {*spec.hyperparameters, *spec.flags, *spec.pairs, *spec.constants}
    merged = {k: v for k, v in merged.items() if k in known or k in given}
    if "lr" in spec.hyperparameters and "lr" not in merged:
        raise ValueError(f"{spec.optimizer.__name__} needs lr")
    lists: dict[str, list[Any]] = {}
    for key, value in merged.items():
        if key in spec.hyperparameters and isinstance(value, (list, tuple)):
            if len(value) != count:
                raise ValueError(f"invalid {spec.optimizer.__name__}.{key}: {len(value)} values for {count} "
                                 "trainable parameter tensors (one per tensor, in named_parameters() order)")
            for i, item in enumerate(value):
                item = item.detach() if isinstance(item, torch.Tensor) else item
                spec.hyperparameters[key].check(f"{spec.optimizer.__name__}.{key}[{i}]", item)
            lists[key] = list(value)
    # The spec checks detached stand-ins (float() of a tensor that requires grad warns); the originals,
    # which carry the graph, are put back by identity.
    originals: dict[int, Any] = {}

    def stand_in(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(stand_in(v) for v in value)
        if isinstance(value, torch.Tensor) and value.requires_grad:
            detached = value.detach()
            originals[id(detached)] = value
            return detached
        return value

    first = {k: stand_in(v[0] if k in lists else v) for k, v in merged.items()}
    checked = spec.functional_kwargs(first, prefix=spec.optimizer.__name__)
    return {**{k: originals.get(id(v), v) for k, v in checked.items()}, **lists}


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map_tensors(fn, t) for t in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(fn, t) for t in tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(fn, v) for k, v in tree.items()}
    return tree


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.item():.4g})" if value.numel() == 1 else f"tensor{tuple(value.shape)}"
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return repr(value)
