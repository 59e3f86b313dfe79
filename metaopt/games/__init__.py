"""Games: several players trained with any optimizers, simultaneously or alternately
(Lorraine et al., 2022)."""

from metaopt.games.game import Game, Vector, game_step
from metaopt.games.gan import GANMixture
from metaopt.games.quadratic import BilinearGame, MixedGame, QuadraticGame
from metaopt.games.spectral import measured_rate, spectral_radius, update_matrix
from metaopt.games.training import GameTraining

__all__ = ["Game", "Vector", "game_step", "GameTraining", "QuadraticGame", "BilinearGame", "MixedGame",
           "GANMixture", "update_matrix", "spectral_radius", "measured_rate"]
