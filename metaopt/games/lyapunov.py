"""Finite-time Lyapunov exponents of a learning update ω_{t+1} = F(ω_t) (Lorraine, Parker-Holder et al.,
2022, "Lyapunov Exponents for Diversity in Differentiable Games", Section 3; Benettin et al., 1980).

The top-k exponents measure how fast the dynamics separate nearby starts along the k most expanding
directions: positive exponents mark a point where learning branches into different outcomes, which is
what Generalized Ridge Rider (``metaopt.outer.GRRLoop``) looks for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vmap

from metaopt.checks import require

__all__ = ["lyapunov_exponents", "initial_frame"]


def initial_frame(size: int, k: int, dtype: torch.dtype = torch.float64, device=None, seed: int = 0) -> torch.Tensor:
    """A ``size × k`` orthonormal frame, the Q of a seeded Gaussian matrix: a generic frame (one with a
    component along every direction almost surely), unlike the first k unit vectors."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(size, k, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(gaussian)[0].to(dtype=dtype, device=device)


def _check(update: Callable, start: torch.Tensor, k: int, steps: int, transient: int) -> None:
    require("update", update, callable(update), "a function ω ↦ ω' on a flat tensor")
    require("start", type(start).__name__, isinstance(start, torch.Tensor), "a torch.Tensor")
    require("start", tuple(start.shape), start.ndim == 1 and start.numel() > 0, "a non-empty flat (1-D) tensor")
    require("start", start.dtype, start.is_floating_point(), "a real floating-point tensor (float32 or float64)")
    with torch.no_grad():
        bad = (~torch.isfinite(start)).nonzero()
    require("start", f"non-finite at index {bad[0].item()}" if len(bad) else "finite", len(bad) == 0,
            "a tensor of finite numbers")
    require("k", k, isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= start.numel(),
            f"an integer from 1 to the number of coordinates of start ({start.numel()})")
    require("steps", steps, isinstance(steps, int) and not isinstance(steps, bool) and steps > 0,
            "a positive integer")
    require("transient", transient, isinstance(transient, int) and not isinstance(transient, bool) and transient >= 0,
            "a non-negative integer")


def lyapunov_exponents(update: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, k: int,
                       steps: int, frame: torch.Tensor | None = None, transient: int = 0,
                       vectorize: bool = True) -> torch.Tensor:
    r"""The finite-time top-``k`` Lyapunov exponents of ``update`` from ``start``, largest first.

    With J_t = ∂F/∂ω at ω_t, a ``k``-column orthonormal frame Q_0 (``frame``, default
    :func:`initial_frame`) is pushed through every step and re-orthonormalised,
    ``J_t Q_t = Q_{t+1} R_t`` (QR), and

    .. math:: \lambda_i = \frac{1}{T} \sum_{t<T} \log |(R_t)_{ii}|,

    sorted in decreasing order (Benettin et al., 1980; Lorraine, Parker-Holder et al., 2022, Eq. 3), over
    the ``steps`` steps that follow ``transient`` steps in which the frame is pushed and re-orthonormalised
    but nothing is accumulated. The frame needs a few steps to turn towards the most expanding directions;
    its early log-stretches bias the average by O(1/T), which ``transient`` removes.
    ``J_t Q_t`` comes from Jacobian-vector products through one call of ``update`` (``torch.func.jvp``,
    vmapped over the k columns, or one column at a time with ``vectorize=False``): no Jacobian is formed.
    For a linear map ω ↦ Mω the exponents tend to ``log |λ_i(M)|``.

    The result is differentiable with respect to ``start`` (and anything ``update`` closes over), so a
    start point can be moved to increase the exponents. Re-orthonormalising every step is what keeps
    the columns apart: without it every column aligns with the top direction and every exponent
    becomes λ_1. ``update`` must be a function of tensors that ``torch.func`` can transform (no
    ``.item()``, no in-place writes to its input, no ``torch.no_grad``).
    """
    _check(update, start, k, steps, transient)
    if frame is None:
        frame = initial_frame(start.numel(), k, start.dtype, start.device)
    require("frame", tuple(frame.shape), tuple(frame.shape) == (start.numel(), k),
            f"a tensor of shape ({start.numel()}, {k}): one column per exponent")

    def push(omega, columns):
        """``(F(ω), J·columns)`` with ``columns`` k × n (one direction per row)."""
        if vectorize:
            outputs, tangents = vmap(lambda v: jvp(update, (omega,), (v,)), randomness="same")(columns)
            return outputs[0], tangents
        pairs = [jvp(update, (omega,), (v,)) for v in columns]
        return pairs[0][0], torch.stack([tangent for _, tangent in pairs])

    omega, frame_rows = start, frame.T
    sums = start.new_zeros(k)
    for t in range(transient + steps):
        new_omega, pushed = push(omega, frame_rows)
        if t == 0:
            require("update", f"returned shape {tuple(new_omega.shape)}", new_omega.shape == start.shape,
                    f"a map to a tensor of start's shape {tuple(start.shape)}")
            require("update", "a map whose Jacobian is zero along the whole frame",
                    bool(pushed.detach().abs().sum() > 0),
                    "a map differentiable in its input (an update that detaches its input, calls .item() or "
                    "runs under torch.no_grad has no Jacobian: its exponents would all be -inf)")
        q, r = torch.linalg.qr(pushed.T)
        if t >= transient:
            sums = sums + torch.log(torch.diagonal(r).abs())
        omega, frame_rows = new_omega, q.T
    return torch.sort(sums / steps, descending=True).values
