"""The dynamics of learning in games: closed-form rates of (complex) momentum on games with a linear
vector field (Lorraine et al., 2022). The games themselves are tasks (``metaopt.tasks.games``)."""

from metaopt.games.spectral import measured_rate, spectral_radius, update_matrix

__all__ = ["update_matrix", "spectral_radius", "measured_rate"]
