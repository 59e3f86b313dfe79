"""Where Generalized Ridge Rider branches, and which of its solutions are the same (Parker-Holder et al.,
2020, "Ridge Rider"; Lorraine, Parker-Holder et al., 2022, "Lyapunov Exponents for Diversity in
Differentiable Games", Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp

from metaopt.checks import require

__all__ = ["eigenpairs", "branch_directions", "deduplicate"]


def _order(values: torch.Tensor) -> torch.Tensor:
    """Indices of ``values`` (complex): smallest real part first, then larger |imaginary part|, then the
    one with positive imaginary part (a conjugate pair keeps a fixed order)."""
    keys = sorted(range(len(values)), key=lambda i: (round(values[i].real.item(), 10),
                                                      -round(abs(values[i].imag.item()), 10),
                                                      -values[i].imag.item()))
    return torch.tensor(keys, dtype=torch.long)


def eigenpairs(vector_field: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor, num: int,
               dense_limit: int = 512, krylov_size: int | None = None,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` eigenvalues and eigenvectors (columns, complex) of the game Jacobian J = ∂ĝ/∂ω at ``point``,
    the least stable for gradient play first: smallest real part first (ω ← ω − αĝ grows along
    Re λ < 0, the ridges of Ridge Rider), a conjugate pair with positive imaginary part first.

    Up to ``dense_limit`` coordinates J is formed (``torch.func.jacfwd``) and decomposed exactly; past it,
    Arnoldi's method builds a Krylov basis of ``krylov_size`` (default ``max(4·num, 20)``) Jacobian-vector
    products and returns the Ritz pairs (extreme eigenvalues converge first).
    """
    size = point.numel()
    require("num", num, isinstance(num, int) and 1 <= num <= size, f"an integer from 1 to {size}")
    point = point.detach()
    if size <= dense_limit:
        jacobian = torch.func.jacfwd(vector_field, randomness="same")(point)
        values, vectors = torch.linalg.eig(jacobian)
    else:
        m = min(size, krylov_size or max(4 * num, 20))
        generator = torch.Generator().manual_seed(seed)
        basis = point.new_zeros(m + 1, size)
        start = torch.randn(size, generator=generator, dtype=torch.float64).to(point)
        basis[0] = start / start.norm()
        hessenberg = point.new_zeros(m + 1, m)
        for j in range(m):
            w = jvp(vector_field, (point,), (basis[j],))[1]
            for i in range(j + 1):  # modified Gram-Schmidt, twice for stability
                hessenberg[i, j] = basis[i] @ w
                w = w - hessenberg[i, j] * basis[i]
            correction = basis[: j + 1] @ w
            w = w - correction @ basis[: j + 1]
            hessenberg[: j + 1, j] += correction
            hessenberg[j + 1, j] = w.norm()
            if hessenberg[j + 1, j] < 1e-12:
                m = j + 1
                break
            basis[j + 1] = w / hessenberg[j + 1, j]
        values, small = torch.linalg.eig(hessenberg[:m, :m])
        vectors = basis[:m].T.to(small.dtype) @ small
    order = _order(values)[:num]
    return values[order], vectors[:, order]


def _canonical(vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real and imaginary parts of ``vector`` (complex) at the phase convention: v is turned by
    e^{−iφ} so that Re v ⟂ Im v and ‖Re v‖ ≥ ‖Im v‖ (the principal axes of the ellipse Re(e^{it}v)),
    then its sign fixed so that the largest entry (in modulus) of Re v is positive; both unit norm."""
    a, b = vector.real, vector.imag
    # Re(e^{−iφ}v) = a cos φ + b sin φ, Im = b cos φ − a sin φ: orthogonal when tan 2φ = 2a·b / (a·a − b·b)
    phi = 0.5 * torch.atan2(2 * (a @ b), a @ a - b @ b)
    real = a * torch.cos(phi) + b * torch.sin(phi)
    imag = b * torch.cos(phi) - a * torch.sin(phi)
    if real.norm() < imag.norm():
        real, imag = imag, -real
    sign = torch.sign(real[real.abs().argmax()])
    real, imag = sign * real, sign * imag
    return real / real.norm(), imag / imag.norm().clamp_min(torch.finfo(imag.dtype).tiny)


def branch_directions(values: torch.Tensor, vectors: torch.Tensor, num: int, tolerance: float = 1e-8) -> list[dict]:
    """Up to ``num`` unit directions to branch along, each with ``eigenvalue`` and ``part`` (``"real"``
    or ``"imag"``) and ``index`` (of the eigenpair): a real eigenvector gives one direction, a complex one
    (the member of its conjugate pair with Im λ > 0) gives two, its real and imaginary parts at the
    phase convention of ``_canonical``; the other member of the pair adds nothing (its parts are the
    same up to sign). The caller branches along ± each direction."""
    out = []
    for i, value in enumerate(values):
        if len(out) >= num:
            break
        if value.imag < -tolerance and any(abs(values[j] - value.conj()) < tolerance for j in range(len(values))):
            continue
        if abs(value.imag) <= tolerance:
            real = vectors[:, i].real if vectors.is_complex() else vectors[:, i]
            if real.norm() < 1e-12:  # a real eigenvalue's vector returned as i·v
                real = vectors[:, i].imag
            real = real / real.norm()
            real = real * torch.sign(real[real.abs().argmax()])
            out.append({"direction": real, "eigenvalue": complex(value), "part": "real", "index": i})
        else:
            real, imag = _canonical(vectors[:, i])
            out.append({"direction": real, "eigenvalue": complex(value), "part": "real", "index": i})
            if len(out) < num:
                out.append({"direction": imag, "eigenvalue": complex(value), "part": "imag", "index": i})
    return out


def deduplicate(features: torch.Tensor, threshold: float) -> tuple[list[int], list[int]]:
    """Greedy clustering of solutions (rows of ``features``) within Euclidean distance ``threshold`` of a
    first member: returns the representatives (first rows of their clusters) and each row's cluster."""
    require("threshold", threshold, threshold >= 0, "a number >= 0")
    representatives: list[int] = []
    labels: list[int] = []
    for i, row in enumerate(features):
        for label, j in enumerate(representatives):
            if torch.linalg.vector_norm(row - features[j]) <= threshold:
                labels.append(label)
                break
        else:
            labels.append(len(representatives))
            representatives.append(i)
    return representatives, labels
