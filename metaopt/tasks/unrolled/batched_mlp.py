"""Many copies of one MLP trained at once with batched matmuls (the particles as the batch dimension) and a
hand-written backward: the gradient path of ``TrainingRun`` for ``nn.Sequential`` MLPs when nothing
differentiates through the steps (the ES estimators).

``vmap(grad(loss))`` over ``functional_call`` is general, but on small models its cost is per-op overhead
(the functorch transforms, the autograd engine, per-particle copies of every minibatch) as much as
arithmetic. For a stack of ``Linear`` layers and elementwise activations the backward is three batched
matmuls and one elementwise op per layer, which this module writes out:

- activations are kept feature-major, ``(N, features, B)``, so that a layer is ``baddbmm(bias, W, a)``
  with ``W`` in its own ``(out, in)`` layout and its weight gradient ``bmm(δ, aᵀ)`` comes out in that
  layout too;
- particles that read the same data stream (antithetic partners) share their minibatch: the particles are
  ordered stream-major, ``(S streams, C copies)``, and the first layer of the ``C`` copies of a stream is
  one matmul ``(C·out, in) @ (in, B)`` against the stream's minibatch, as is its weight gradient, so that
  each minibatch is gathered once per stream rather than copied for every particle;
- the cross-entropy runs over the class axis of ``(N, classes, B)`` (a long inner axis), and its gradient
  is ``softmax − onehot`` scaled in place;
- with ``reuse=True`` (eager steps) every large intermediate is written into a buffer kept from the last
  call of the same shapes (``out=`` and in-place ops): a fresh multi-megabyte tensor per op costs the
  allocator's page faults (measured: a sixth of an eager PES step on digits at 256 particles, in system
  time). The gradients returned then live in those buffers until the next call.

No autograd graph is built. ``from_model`` returns ``None`` for any other model (anything but ``Flatten``,
``Linear``, ``Identity`` and the activations below), and ``TrainingRun`` then uses ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["BatchedMLP"]


class _Layer(NamedTuple):
    weight: int  # index of the weight among the model's parameters
    bias: int | None
    out_features: int
    activation: str | None  # applied after this layer
    approximate: str = "none"  # GELU's


_MAX_BUFFERS = 256
_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}


def _pre_scale(layer: _Layer) -> float:
    """What the layer's matmul scales its output by (``alpha``/``beta`` of ``baddbmm``, free): 2 for tanh,
    computed as ``2σ(2z) − 1``."""
    return 2.0 if layer.activation == "tanh" else 1.0


def _activate(z: torch.Tensor, layer: _Layer) -> torch.Tensor:
    """The activation of ``z`` (for tanh, ``z`` is already ``2z``), in place where the backward needs only
    the output.

    ``tanh(z) = 2σ(2z) − 1``: torch's CPU ``tanh`` costs about six times its ``sigmoid`` (it was the
    largest elementwise cost of a training step), and the identity is exact up to rounding (within
    2e-7 of ``torch.tanh``, absolute, the rounding of a float32 near 1)."""
    if layer.activation == "tanh":
        return z.sigmoid_().mul_(2.0).sub_(1.0)
    if layer.activation == "relu":
        return z.relu_()
    if layer.activation == "sigmoid":
        return z.sigmoid_()
    return torch.nn.functional.gelu(z, approximate=layer.approximate)  # keeps z for the backward


def _activation_backward(grad: torch.Tensor, output: torch.Tensor, pre: torch.Tensor | None,
                         layer: _Layer) -> torch.Tensor:
    """The gradient through the activation, written over ``grad`` (a temporary of the backward)."""
    aten = torch.ops.aten
    if layer.activation == "tanh":
        return aten.tanh_backward.grad_input(grad, output, grad_input=grad)
    if layer.activation == "relu":
        return aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)
    if layer.activation == "sigmoid":
        return aten.sigmoid_backward.grad_input(grad, output, grad_input=grad)
    return aten.gelu_backward.grad_input(grad, pre, approximate=layer.approximate, grad_input=grad)


class BatchedMLP:
    """Loss, gradients and outputs of ``N`` parameter sets of one ``nn.Sequential`` MLP.

    Parameters are tuples of ``(N, …)`` tensors in the model's parameter order. Data come per stream:
    inputs ``(S, B, …)``, targets ``(S, B, …)``, and particle ``j`` reads stream ``j // C`` with
    ``C = N // S`` (stream-major order). ``kind`` is the task's: ``classification`` (cross-entropy over
    integer targets) or ``regression`` (half the mean squared error of the flattened outputs).
    """

    def __init__(self, layers: Sequence[_Layer], kind: str):
        self.layers = list(layers)
        self.kind = kind
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _buffer(self, name: str, shape: Sequence[int], like: torch.Tensor, reuse: bool) -> torch.Tensor | None:
        """The kept buffer ``name`` of ``shape`` (``like``'s dtype and device), or ``None`` without ``reuse``.

        Kept per shape, so that calls with different particle counts (several estimators, evaluations)
        alternate without reallocating; at most ``_MAX_BUFFERS`` are kept (then all are dropped)."""
        if not reuse:
            return None
        key = (name, tuple(shape), like.dtype, like.device)
        buffer = self._buffers.get(key)
        if buffer is None:
            if len(self._buffers) >= _MAX_BUFFERS:
                self._buffers.clear()
            buffer = self._buffers[key] = torch.empty(key[1], dtype=like.dtype, device=like.device)
        return buffer

    @classmethod
    def from_model(cls, model: nn.Module, kind: str) -> BatchedMLP | None:
        """The batched form of ``model``, or ``None`` when it is not a plain MLP: an ``nn.Sequential`` of
        ``Flatten`` (first, flattening all but the batch axis), ``Linear``, ``Identity`` and ``Tanh``/
        ``ReLU``/``Sigmoid``/``GELU`` (a subclass of any of them is not taken: it may compute otherwise)."""
        if type(model) is not nn.Sequential and not (isinstance(model, nn.Sequential)
                                                    and type(model).forward is nn.Sequential.forward):
            return None
        if kind not in ("classification", "regression"):
            return None
        names = [name for name, _ in model.named_parameters()]
        layers: list[_Layer] = []
        for position, (name, module) in enumerate(model.named_children()):
            kind_of = type(module)
            if kind_of is nn.Flatten:
                if position != 0 or module.start_dim != 1 or module.end_dim != -1:
                    return None
            elif kind_of is nn.Identity:
                continue
            elif kind_of is nn.Linear:
                weight = names.index(f"{name}.weight")
                bias = names.index(f"{name}.bias") if module.bias is not None else None
                layers.append(_Layer(weight, bias, module.out_features, None))
            elif kind_of in _ACTIVATIONS:
                if not layers or layers[-1].activation is not None:
                    return None
                approximate = getattr(module, "approximate", "none")
                layers[-1] = layers[-1]._replace(activation=_ACTIVATIONS[kind_of], approximate=approximate)
            else:
                return None
        counted = sum(1 + (layer.bias is not None) for layer in layers)
        if not layers or counted != len(names) or any(p.dtype not in (torch.float32, torch.float64)
                                                       for p in model.parameters()):
            return None
        return cls(layers, kind)

    # -- forward ------------------------------------------------------------------------------------
    def _forward(self, params: Sequence[torch.Tensor], inputs: torch.Tensor, keep: bool, reuse: bool = False):
        """Output logits ``(N, out, B)``, and (``keep``) what the backward needs per layer: its input
        ``(N or S, in, B)``, its activation's output and pre-activation."""
        streams, batch = inputs.shape[0], inputs.shape[1]
        num = params[0].shape[0]
        copies = num // streams
        x = inputs.reshape(streams, batch, -1)
        a = x.transpose(1, 2)  # (S, in, B), a view
        saved = []
        for i, layer in enumerate(self.layers):
            weight = params[layer.weight]
            groups = streams if i == 0 else num
            w = weight.reshape(groups, -1, weight.shape[-1])  # the first layer: C copies stacked per stream
            scale = _pre_scale(layer)
            out = self._buffer(f"z{i}", (groups, w.shape[1], batch), w, reuse)
            if layer.bias is not None:
                bias = params[layer.bias].reshape(groups, -1, 1)
                z = torch.baddbmm(bias, w, a, beta=scale, alpha=scale, out=out)
            else:
                z = torch.bmm(w, a, out=out)
                if scale != 1.0:
                    z = z.mul_(scale)
            z = z.view(num, layer.out_features, batch)
            pre = z if layer.activation == "gelu" else None
            out = _activate(z, layer) if layer.activation else z
            if keep:
                saved.append((a, out, pre))
            a = out
        return a, saved, x, copies

    def _per_stream(self, targets: torch.Tensor, copies: int) -> torch.Tensor:
        """Targets ``(S, B, …)`` repeated for the ``C`` copies of each stream: a view ``(N, B, …)``."""
        return targets[:, None].expand(targets.shape[0], copies, *targets.shape[1:]).flatten(0, 1)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, copies: int, grad: bool, reuse: bool = False):
        """Per-particle loss (N,) of feature-major ``logits`` (N, out, B), and its gradient (in place of
        ``logits``) when ``grad``."""
        num, _, batch = logits.shape
        if self.kind == "classification":
            log_probs = torch.log_softmax(logits, dim=1, out=self._buffer("log_probs", logits.shape, logits, reuse))
            index = self._per_stream(targets.reshape(targets.shape[0], 1, batch), copies)  # (N, 1, B)
            losses = -log_probs.gather(1, index).mean(dim=(1, 2))
            if not grad:
                return losses, None
            grad_logits = log_probs.exp_().div_(batch)  # softmax / B
            grad_logits.scatter_add_(1, index, torch.full((1, 1, 1), -1.0 / batch, dtype=logits.dtype,
                                                          device=logits.device).expand(num, 1, batch))
            return losses, grad_logits
        # regression: ½·mean((y − t)²) over the flattened outputs of each particle's minibatch
        targets = self._per_stream(targets.reshape(targets.shape[0], batch, -1), copies)  # (N, B, out)
        residual = logits - targets.transpose(1, 2)
        count = residual[0].numel()
        losses = 0.5 * residual.square().sum(dim=(1, 2)) / count
        return losses, (residual.div_(count) if grad else None)

    def losses(self, params: Sequence[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
               reuse: bool = False) -> torch.Tensor:
        """Every particle's loss (N,) on its stream's minibatch."""
        logits, _, _, copies = self._forward(params, inputs, keep=False, reuse=reuse)
        return self._loss(logits, targets, copies, grad=False, reuse=reuse)[0]

    def outputs(self, params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs ``(N, B, out)`` (a transposed view)."""
        return self._forward(params, inputs, keep=False)[0].transpose(1, 2)

    # -- gradient -----------------------------------------------------------------------------------
    def loss_and_grad(self, params: Sequence[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
                      reuse: bool = False) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every particle's gradient (a tuple like ``params``) and loss (N,) on its stream's minibatch
        (``reuse``: the gradients live in kept buffers, overwritten by the next call)."""
        logits, saved, x, copies = self._forward(params, inputs, keep=True, reuse=reuse)
        losses, delta = self._loss(logits, targets, copies, grad=True, reuse=reuse)
        grads: list[torch.Tensor | None] = [None] * len(params)
        streams = x.shape[0]
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            weight = params[layer.weight]
            if layer.bias is not None:
                grads[layer.bias] = torch.sum(delta, -1, out=self._buffer(f"db{i}", delta.shape[:2], delta, reuse))
            if i == 0:
                # the C copies of a stream against its minibatch, in one matmul: (C·out, B) @ (B, in)
                stacked = delta.reshape(streams, -1, delta.shape[-1])
                out = self._buffer(f"dw{i}", (streams, stacked.shape[1], x.shape[-1]), delta, reuse)
                grads[layer.weight] = torch.bmm(stacked, x, out=out).view(weight.shape)
                break
            a, _, _ = saved[i]
            out = self._buffer(f"dw{i}", weight.shape, delta, reuse)
            grads[layer.weight] = torch.bmm(delta, a.transpose(1, 2), out=out)
            below = self.layers[i - 1]
            upstream = torch.bmm(weight.transpose(1, 2), delta, out=self._buffer(f"up{i}", a.shape, delta, reuse))
            _, out, pre = saved[i - 1]
            delta = _activation_backward(upstream, out, pre, below) if below.activation else upstream
        return tuple(grads), losses
