"""Closed-form convergence rates of (complex) momentum on games with a linear vector field ĝ(ω) = Jω."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["update_matrix", "spectral_radius", "measured_rate"]


def update_matrix(jacobian: torch.Tensor, lr: float | torch.Tensor, momentum: float | torch.Tensor,
                  angle: float | torch.Tensor, blocks: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    r"""The matrix R of one round of complex momentum over the state ``z = [Re μ, Im μ, ω]``, ``z' = R z``.

    With ``β = momentum·e^{i·angle} = a + ib`` and a moving block P of coordinates (indicator P,
    Q = I − P), ``μ ← βμ − Jω``, ``ω ← ω + lr·Re μ`` restricted to P reads

    .. math::
        R_P = \begin{bmatrix} Q + aP & −bP & −PJ \\ bP & Q + aP & 0 \\ \mathrm{lr}·aP & −\mathrm{lr}·bP
        & I − \mathrm{lr}·PJ \end{bmatrix}.

    ``blocks=None`` is simultaneous play (one block, all coordinates: the paper's Eq. 6); a list of
    index blocks plays them in turn (alternating updates), ``R = R_{P_k} ⋯ R_{P_1}``. ``lr``,
    ``momentum`` and ``angle`` may be tensors of one batch shape S: the result is then ``S × 3n × 3n``.
    """
    n = jacobian.shape[0]
    dtype = jacobian.dtype
    lr, momentum, angle = (torch.as_tensor(v, dtype=dtype) for v in (lr, momentum, angle))
    lr, momentum, angle = torch.broadcast_tensors(lr, momentum, angle)
    batch = lr.shape
    a, b, lr = (v[..., None, None] for v in (momentum * torch.cos(angle), momentum * torch.sin(angle), lr))
    eye = torch.eye(n, dtype=dtype)
    total = torch.eye(3 * n, dtype=dtype).expand(*batch, 3 * n, 3 * n)
    for block in blocks if blocks is not None else [range(n)]:
        mask = torch.zeros(n, dtype=dtype)
        mask[list(block)] = 1
        moving = torch.diag(mask)
        still = eye - moving
        rows = [[still + a * moving, -b * moving, -moving @ jacobian],
                [b * moving, still + a * moving, torch.zeros_like(eye)],
                [lr * a * moving, -lr * b * moving, eye - lr * (moving @ jacobian)]]
        step = torch.cat([torch.cat([m.expand(*batch, n, n) for m in row], -1) for row in rows], -2)
        total = step @ total
    return total


def spectral_radius(matrix: torch.Tensor) -> float | torch.Tensor:
    """``max |λ|`` over the eigenvalues of ``matrix`` (the asymptotic linear rate of ``z ← matrix·z``);
    a tensor of radii for a batch of matrices."""
    radius = torch.linalg.eigvals(matrix).abs().amax(-1)
    return radius.item() if radius.ndim == 0 else radius


def measured_rate(norms: Sequence[float] | torch.Tensor, start: int | None = None) -> float:
    """The linear rate ``exp(slope)`` of a least-squares line through ``log norms[t]``, ``t ≥ start``
    (default: the second half, past the transient)."""
    logs = torch.as_tensor(norms, dtype=torch.float64).log()
    start = len(logs) // 2 if start is None else start
    logs = logs[start:]
    steps = torch.arange(len(logs), dtype=torch.float64)
    centred = steps - steps.mean()
    slope = (centred * (logs - logs.mean())).sum() / centred.square().sum()
    return math.exp(slope.item())
