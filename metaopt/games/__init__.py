"""The dynamics of learning in games: closed-form rates of (complex) momentum on games with a linear
vector field (Lorraine et al., 2022); the learning dynamics of any game as one update map, its Lyapunov
exponents, and where Generalized Ridge Rider branches (Lorraine, Parker-Holder et al., 2022). The games
themselves are tasks (``metaopt.tasks.games``)."""

from metaopt.games.branching import branch_directions, deduplicate, eigenpairs
from metaopt.games.dynamics import GameDynamics
from metaopt.games.lyapunov import initial_frame, lyapunov_exponents
from metaopt.games.spectral import measured_rate, spectral_radius, update_matrix

__all__ = ["update_matrix", "spectral_radius", "measured_rate", "lyapunov_exponents", "initial_frame",
           "GameDynamics", "eigenpairs", "branch_directions", "deduplicate"]
