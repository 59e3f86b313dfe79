"""APO: Amortized Proximal Optimization (Bae, Vicol, HaoChen and Grosse, NeurIPS 2022).

APO meta-learns, online and during ordinary training, the parameters φ of an update rule
``θ' = u_φ(θ, B)`` by taking, every ``meta_interval`` steps, one gradient step on the one-step
proximal-point objective at the lookahead ``θ'(φ)`` (the paper's meta-objective, its Fig. 2)::

    Q(φ) = J_B(θ') + λ_FSD·D(f(·, θ'), f(·, θ); B') + (λ_WSD/2)·‖θ' − θ‖²

One file per piece: :mod:`.objective` (Q and the lookahead forward), :mod:`.divergence` (D),
:mod:`.probe` (the base optimizer's direction), :mod:`.lr` (APO-LR), :mod:`.precond` (APO-Precond),
:mod:`.optimizer` (the ``torch.optim.Optimizer`` that runs them) and :mod:`.step` (a training step with it).
"""

from metaopt.optim.apo.divergence import divergence_for
from metaopt.optim.apo.optimizer import APO
from metaopt.optim.apo.step import meta_learns, training_step

__all__ = ["APO", "divergence_for", "training_step", "meta_learns"]
