"""A learned optimizer's pure update: a small MLP, applied to every parameter element, maps features of
its gradient history to a step (in the style of learned_optimization's per-parameter MLP optimizers,
Metz et al., 2019/2020; used by the PES and ES-Single papers' learned-optimizer experiments).

Per element, with ``g`` the gradient and ``p`` the parameter, the state keeps momenta ``m_k`` at the
decays ``MOMENTUM_DECAYS`` and a second moment ``v`` (decay ``SECOND_MOMENT_DECAY``, bias-corrected). The
``NUM_FEATURES`` inputs are

* ``g, p, m_1..m_K, √v̂``, each divided by its root-mean-square over the tensor (the anchor's
  "second moment normaliser", which makes the inputs independent of each tensor's scale);
* ``g/(√v̂+ε), m_1/(√v̂+ε), …, m_K/(√v̂+ε)``: Adam-like normalised gradient and momenta (not in the
  anchor, whose inputs are only the normalised raw values);
* ``tanh(t/s − 1)`` for the four ``timescales`` (default ``TIMESCALES``: 3, 30, 300, 1000 steps): the step
  count ``t``, the same for every element. The anchor has eleven, 1 … 100 000 steps. With 300 and 1000 the
  MLP knows where it is in a run of ~1000 steps, so that it can anneal its step (constant Adam's last
  losses are its minibatch noise floor; the annealed start below beats tuned constant Adam on 3 of 5
  held-out tasks before any meta-training). The weights of the first designs used ``LEGACY_TIMESCALES``
  (1, 3, 10, 30: saturated within ~100 steps, so that the MLP could not tell step 200 from step 2000); the
  timescales are saved with the weights (files without them have the legacy ones).

The MLP (``hidden`` ReLU layers) outputs a direction ``d`` and a log-magnitude ``s``; the update is

    p ← p − lr · B·tanh(d/B) · exp(S·tanh(s/S)) · STEP_SCALE,    B = MAX_DIRECTION, S = MAX_LOG_MAGNITUDE

Where this differs from the anchor (``p − d·exp(0.001·s)·0.001``): the magnitude is ``exp(s)`` (the
anchor's needs outputs in the thousands to move the step size, which an ES outer loop with a small σ
cannot reach); both outputs are softly bounded (identity near 0), so that inputs unlike those of
meta-training (a deeper net, a longer run) cannot produce an unbounded step: every element moves at most
``B·e^S·STEP_SCALE`` per step (weights meta-trained without the bounds diverged on held-out nets); and the
output layer has a linear skip path from the features, so that the weights from ``initial_weights``
(hidden-to-output weights zero, the skip reading ``m_2/(√v̂+ε)``) start meta-training as Adam with
β₁ = ``MOMENTUM_DECAYS[1]`` and lr ``STEP_SCALE`` (without bias correction of the momentum) rather than as
noise. ``lr`` is a plain multiplier of the step (what LR schedulers act on; 1 by default).

``form="adam"`` (``FORMS``) reads both outputs as a bounded correction of Adam's step instead:

    p ← p − lr · a · (1 + C·tanh(d)) · exp(M·tanh(s/M)) · ADAM_STEP_SCALE,    a = m_2/(√v̂+ε),
    C = ADAM_CORRECTION (0.5), M = ADAM_LOG_RANGE (ln 2)

so the MLP only says, per element and step, how much to scale Adam's step, within a factor [0.25, 3] of
Adam at lr ``ADAM_STEP_SCALE`` (1e-2), never reversing it: whatever the weights, every element takes an
Adam step of lr 2.5e-3 … 3e-2 (on the held-out tasks Adam at 3e-3 and at 1e-2 beats Adam at 1e-3 on
every task, at 3e-2 on all but the 3-layer ReLU net).
Its initial weights (zero outputs) make it Adam at 1e-2. Unlike the ``"direction"`` form, whose inputs are
normalised per tensor and so give steps of the same size however small the gradients have become (a noise
floor: weights of that form meta-trained by PES kept taking steps ~80× larger than Adam's late in
training on a held-out 3-layer ReLU net, whose loss rose again), every step here is proportional to
Adam's, which shrinks as the recent gradients fall below the ones ``v`` remembers. Neither the anchor nor
``small_fc_lopt`` has this form. ``initial_weights(lr=…)`` starts either form at another Adam lr (the
log-magnitude's bias, within the form's range); ``initial_weights(lr=…, final_lr=…, decay=(start, end),
form="adam")`` starts it annealed: Adam at ``lr`` until step ``start``, then a cosine down to ``final_lr``
at ``end``, written into the skip path from the time features to the outputs (fitted in log step size).
The form is saved with the weights (files without it are ``"direction"``).

The weights θ are one flat tensor (``weights``), the layout given by ``layout(hidden)``, so that ES
perturbs them as one vector and ``torch.func.vmap`` batches them over particles. All tensors of a call
go through the MLP at once (one matmul over the concatenated elements: the multi-tensor path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from metaopt.optim.functional._utils import Tensors, sqrt, step_count

__all__ = ["LearnedState", "learned_init", "learned", "layout", "initial_weights", "num_weights", "check_form",
           "check_timescales", "time_features", "FORMS", "NUM_FEATURES", "MOMENTUM_DECAYS", "SECOND_MOMENT_DECAY",
           "TIMESCALES", "LEGACY_TIMESCALES", "STEP_SCALE",
           "MAX_DIRECTION", "MAX_LOG_MAGNITUDE", "ADAM_STEP_SCALE", "ADAM_CORRECTION", "ADAM_LOG_RANGE"]

MOMENTUM_DECAYS = (0.5, 0.9, 0.99)
SECOND_MOMENT_DECAY = 0.999
TIMESCALES = (3.0, 30.0, 300.0, 1000.0)
LEGACY_TIMESCALES = (1.0, 3.0, 10.0, 30.0)  # the first designs' (weights saved without their timescales)
MAX_LOG_MAGNITUDE = 3.0   # S: the step multiplier stays in [e^-3, e^3]
MAX_DIRECTION = 3.0       # B: |direction| < 3
ADAM_STEP_SCALE = 1e-2    # form "adam": the lr of the Adam step that the MLP corrects
ADAM_CORRECTION = 0.5     # form "adam": the direction output's factor 1 + C·tanh(d) stays in [0.5, 1.5]
ADAM_LOG_RANGE = math.log(2.0)  # form "adam": the magnitude output's factor stays in [1/2, 2]
STEP_SCALE = 3e-3
EPS = 1e-8
CHUNK = 16384  # rows of the MLP per block
_NORMALISED = 3 + len(MOMENTUM_DECAYS)          # g, p, m_k, √v̂ (RMS-normalised per tensor)
_ADAPTIVE = 1 + len(MOMENTUM_DECAYS)            # g/√v̂, m_k/√v̂
NUM_FEATURES = _NORMALISED + _ADAPTIVE + len(TIMESCALES)
ADAM_FEATURE = _NORMALISED + 2                   # m_2/(√v̂+ε): Adam's direction with β₁ = 0.9
FORMS = ("direction", "adam")  # what the MLP's first output is: the step's direction, or a factor of Adam's


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"invalid form: {form!r} (allowed: one of {FORMS})")
    return form


def check_timescales(timescales: Sequence[float]) -> tuple[float, ...]:
    ok = (isinstance(timescales, Sequence) and len(timescales) == len(TIMESCALES)
          and all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in timescales))
    if not ok:
        raise ValueError(f"invalid timescales: {timescales!r} (allowed: {len(TIMESCALES)} positive numbers of steps, "
                         f"e.g. {list(TIMESCALES)})")
    return tuple(float(s) for s in timescales)


def time_features(step: float, timescales: Sequence[float]) -> list[float]:
    """The time features ``tanh(t/s − 1)`` of step ``t`` (plain floats)."""
    return [math.tanh(step / s - 1) for s in timescales]


class LearnedState(NamedTuple):
    momenta: Tensors
    """One tensor per parameter, shape ``(K, *param.shape)``: the momenta at ``MOMENTUM_DECAYS``."""
    second_moment: Tensors
    step: torch.Tensor


def layout(hidden: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the blocks of the flat weights, in order: ``w{i}``/``b{i}`` of the hidden layers,
    ``w_out``/``b_out`` (2 outputs), ``skip`` (features → outputs)."""
    blocks, width = [], NUM_FEATURES
    for i, size in enumerate(hidden):
        blocks += [(f"w{i}", (size, width)), (f"b{i}", (size,))]
        width = size
    return blocks + [("w_out", (2, width)), ("b_out", (2,)), ("skip", (2, NUM_FEATURES))]


def num_weights(hidden: Sequence[int]) -> int:
    return sum(int(torch.Size(shape).numel()) for _, shape in layout(hidden))


def initial_weights(hidden: Sequence[int] = (32,), generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, lr: float | None = None, form: str = "direction",
                    final_lr: float | None = None, decay: tuple[int, int] = (500, 1000),
                    timescales: Sequence[float] = TIMESCALES) -> torch.Tensor:
    """Weights that start as Adam (β₁ 0.9, lr ``lr``): hidden layers initialised as ``nn.Linear``
    (uniform ±1/√fan_in, biases 0), the hidden-to-output weights 0, the direction (``form="direction"``)
    the skip path reading ``m_2/(√v̂+ε)`` (``form="adam"``: all outputs 0, the correction factor 1), and
    the log-magnitude's bias the one whose bounded step multiplier is ``lr`` over the form's scale (0 when
    ``lr`` is the form's scale: ``STEP_SCALE``, or ``ADAM_STEP_SCALE`` for ``"adam"``; ``lr`` within
    scale·e^(±0.9·range), range ``MAX_LOG_MAGNITUDE`` or ``ADAM_LOG_RANGE``; ``None``: the scale).

    ``final_lr`` (``form="adam"``): an annealed start instead, Adam at ``lr`` until step ``decay[0]``, then a
    cosine down to ``final_lr`` at step ``decay[1]`` and ``final_lr`` after it (to twice ``decay[1]``): both
    outputs' skip weights from the time features (``timescales``) and their biases fitted to that schedule's
    log step size (the form's factor reaches ×0.25 … ×3 of ``ADAM_STEP_SCALE``). A schedule the features
    cannot follow within 25 % is refused."""
    check_form(form)
    timescales = check_timescales(timescales)
    scale, bound = (ADAM_STEP_SCALE, ADAM_LOG_RANGE) if form == "adam" else (STEP_SCALE, MAX_LOG_MAGNITUDE)
    lr = scale if lr is None else lr
    if final_lr is None:
        ratio = math.log(lr / scale) / bound if lr > 0 else float("inf")
        if not abs(ratio) < 0.9:
            raise ValueError(f"invalid lr: {lr} (allowed: a step size within {scale:g}·e^(±0.9·{bound:.3g}), "
                             f"{scale * math.exp(-0.9 * bound):.2g} to {scale * math.exp(0.9 * bound):.2g}, that "
                             f"the bounded magnitude of the {form!r} form reaches)")
        outputs = torch.zeros(2, len(timescales) + 1, dtype=torch.float64)  # no time weights; the biases
        outputs[1, -1] = bound * math.atanh(ratio)
    else:
        if form != "adam":
            raise ValueError(f"invalid final_lr: {final_lr} (allowed: None for the {form!r} form; an annealed "
                             "start is written into the 'adam' form's two bounded outputs)")
        outputs = _annealed_outputs(lr, final_lr, decay, timescales)
    parts = []
    for name, shape in layout(hidden):
        block = torch.zeros(shape, dtype=dtype)
        if name.startswith("w") and name != "w_out":
            block = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * shape[1] ** -0.5
        if name == "skip":
            if form == "direction":
                block[0, ADAM_FEATURE] = 1.0
            block[:, NUM_FEATURES - len(TIMESCALES):] += outputs[:, :-1].to(dtype)
        if name == "b_out":
            block[:] = outputs[:, -1].to(dtype)
        parts.append(block.flatten())
    return torch.cat(parts)


def _log_adam_factor(direction: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """log of the ``"adam"`` form's factor of Adam's step, from the two outputs."""
    return torch.log1p(ADAM_CORRECTION * torch.tanh(direction)) + ADAM_LOG_RANGE * torch.tanh(
        magnitude / ADAM_LOG_RANGE)


def _annealed_outputs(lr: float, final_lr: float, decay: tuple[int, int],
                      timescales: tuple[float, ...]) -> torch.Tensor:
    """(2, K + 1): the ``"adam"`` form's outputs' weights on the K time features and their biases whose step
    follows the annealed schedule of ``initial_weights`` (least squares in log step size over ~400 steps of
    ``1 … 2·decay[1]``, L-BFGS, float64)."""
    scale, low, high = ADAM_STEP_SCALE, math.log(0.25), math.log(3.0)
    for name, value in (("lr", lr), ("final_lr", final_lr)):
        if not (isinstance(value, (int, float)) and value > 0 and 0.9 * low < math.log(value / scale) < 0.9 * high):
            raise ValueError(f"invalid {name}: {value} (allowed: a step size within {scale * math.exp(0.9 * low):.2g} "
                             f"to {scale * math.exp(0.9 * high):.2g}, that the bounded outputs of the 'adam' form "
                             "reach)")
    ok = (isinstance(decay, Sequence) and len(decay) == 2 and all(isinstance(d, int) for d in decay)
          and 0 <= decay[0] < decay[1])
    if not ok:
        raise ValueError(f"invalid decay: {decay!r} (allowed: (start, end), integer steps with 0 <= start < end)")
    start, end = decay
    t = torch.arange(1, 2 * end + 1, max(1, end // 200), dtype=torch.float64)
    progress = ((t - start) / (end - start)).clamp(0, 1)
    target = math.log(final_lr / scale) + (math.log(lr / scale) - math.log(final_lr / scale)) * 0.5 * (
        1 + torch.cos(math.pi * progress))
    features = torch.stack([torch.tanh(t / s - 1) for s in timescales] + [torch.ones_like(t)], dim=1)
    outputs = torch.zeros(2, len(timescales) + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([outputs], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def error() -> torch.Tensor:
        return _log_adam_factor(features @ outputs[0], features @ outputs[1]) - target

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = error().square().mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        worst = float(error().abs()[t <= end].max())
    if worst > math.log(1.25):
        raise ValueError(f"invalid final_lr/decay: {final_lr}, {decay} (allowed: a schedule the time features "
                         f"{list(timescales)} follow within 25 %; this one is off by {math.exp(worst):.2f}x)")
    return outputs.detach()


def learned_init(params: Sequence[torch.Tensor]) -> LearnedState:
    momenta = tuple(torch.zeros((len(MOMENTUM_DECAYS), *p.shape), dtype=p.dtype, device=p.device) for p in params)
    return LearnedState(momenta, tuple(torch.zeros_like(p) for p in params), step_count(params))


def _unpack(weights: torch.Tensor, hidden: Sequence[int]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, shape in layout(hidden):
        size = int(torch.Size(shape).numel())
        out[name] = weights[offset: offset + size].view(shape)
        offset += size
    return out


def _mlp(inputs: torch.Tensor, w: dict[str, torch.Tensor], layers: int) -> torch.Tensor:
    """(direction, log-magnitude), shape (2, n), of every column of ``inputs`` (F, n): the hidden ReLU layers,
    the output layer and the linear skip path from the features (the columns as a matmul's inner layout,
    so that features built row by row are never transposed)."""
    out = inputs
    for i in range(layers):
        out = torch.relu(torch.addmm(w[f"b{i}"][:, None], w[f"w{i}"], out))
    return torch.addmm(w["b_out"][:, None], w["w_out"], out) + w["skip"] @ inputs


def _features(g, p, m, root, scales, clock) -> torch.Tensor:
    """The (F, n) inputs of the elements given (flat slices), with the tensor's RMS ``scales`` of the raw ones."""
    raw = torch.cat([g[None], p[None], m, root[None]]) * scales
    adaptive = torch.cat([g[None], m]) / (root + EPS)
    return torch.cat([raw, adaptive, clock.expand(len(TIMESCALES), g.shape[0])])


def learned(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: LearnedState,
    *,
    weights: torch.Tensor,
    hidden: Sequence[int] = (32,),
    lr: float | torch.Tensor = 1.0,
    maximize: bool = False,
    form: str = "direction",
    timescales: Sequence[float] = TIMESCALES,
) -> tuple[Tensors, LearnedState]:
    """One step of the learned optimizer with weights ``weights`` (flat, ``layout(hidden)``) on every tensor;
    ``form``: what the MLP's first output is (``FORMS``, the module's docstring); ``timescales``: the steps
    of the time features (those the weights were trained with)."""
    check_form(form)
    timescales = check_timescales(timescales)
    if weights.numel() != num_weights(hidden):
        raise ValueError(f"invalid weights: {weights.numel()} numbers (allowed: {num_weights(hidden)}, the size "
                         f"of a learned optimizer with hidden={list(hidden)})")
    step = state.step + 1
    bias_second = 1 - SECOND_MOMENT_DECAY ** step
    decays = torch.tensor(MOMENTUM_DECAYS, dtype=params[0].dtype, device=params[0].device) if params else None
    time = torch.tanh(step / torch.tensor(timescales, dtype=torch.float64, device=step.device) - 1)
    clock = time.to(params[0].dtype)[:, None] if params else None
    w = _unpack(weights.to(params[0].dtype), hidden) if params else None
    steps: list[torch.Tensor | None] = [None] * len(params)
    pending: list[tuple[int, torch.Tensor]] = []  # small tensors' features, run through the MLP together

    def flush():
        if pending:
            outputs = _mlp(torch.cat([f for _, f in pending], dim=1), w, len(hidden))
            for (i, _), out in zip(pending, outputs.split([f.shape[1] for _, f in pending], dim=1)):
                steps[i] = out
            pending.clear()

    momenta, seconds, adam = [], [], []
    for i, (p, g, m, v) in enumerate(zip(params, grads, state.momenta, state.second_moment)):
        g = -g if maximize else g
        shape = (-1,) + (1,) * g.dim()
        m = decays.view(shape) * m + (1 - decays.view(shape)) * g
        v = SECOND_MOMENT_DECAY * v + (1 - SECOND_MOMENT_DECAY) * g * g
        momenta.append(m)
        seconds.append(v)
        root = sqrt(v / bias_second.to(v.dtype)).reshape(-1)
        flat = (g.reshape(-1), p.reshape(-1), m.reshape(len(MOMENTUM_DECAYS), -1), root)
        if form == "adam":
            adam.append(flat[2][1] / (root + EPS))
        # Each raw input divided by its root-mean-square over the tensor (the anchor's normaliser), from
        # norms: no (raw inputs × elements) copy just for the statistics.
        n = root.shape[0]
        norms = torch.cat([torch.linalg.vector_norm(flat[0])[None], torch.linalg.vector_norm(flat[1])[None],
                           torch.linalg.vector_norm(flat[2], dim=1), torch.linalg.vector_norm(root)[None]])
        scales = torch.rsqrt(norms.square() / n + 1e-12)[:, None]
        if n < CHUNK:
            pending.append((i, _features(*flat, scales, clock)))
            if sum(f.shape[1] for _, f in pending) >= CHUNK:
                flush()
            continue
        # A large tensor: its features built and used block by block, in cache.
        steps[i] = torch.cat([_mlp(_features(g_, p_, m_, r_, scales, clock), w, len(hidden))
                              for g_, p_, m_, r_ in zip(flat[0].split(CHUNK), flat[1].split(CHUNK),
                                                        flat[2].split(CHUNK, dim=1), root.split(CHUNK))], dim=1)
    flush()
    new_params = []
    for i, (p, out) in enumerate(zip(params, steps)):
        if form == "adam":
            factor = (1 + ADAM_CORRECTION * torch.tanh(out[0])) * torch.exp(
                ADAM_LOG_RANGE * torch.tanh(out[1] / ADAM_LOG_RANGE))
            step_size = adam[i] * factor * (ADAM_STEP_SCALE * lr)
        else:
            direction = MAX_DIRECTION * torch.tanh(out[0] / MAX_DIRECTION)
            magnitude = torch.exp(MAX_LOG_MAGNITUDE * torch.tanh(out[1] / MAX_LOG_MAGNITUDE))
            step_size = direction * magnitude * (STEP_SCALE * lr)
        new_params.append(p - step_size.view(p.shape).to(p.dtype))
    return tuple(new_params), LearnedState(tuple(momenta), tuple(seconds), step)
