"""Differentiable games: players (``nn.Module``s) with their own objectives (Lorraine et al., 2022)."""

from metaopt.tasks.games.game import UPDATES, Game, Vector, game_step
from metaopt.tasks.games.gan import GANMixture
from metaopt.tasks.games.ipd import IteratedPrisonersDilemma, ipd_values
from metaopt.tasks.games.quadratic import BilinearGame, MixedGame, QuadraticGame

__all__ = ["Game", "Vector", "game_step", "UPDATES", "QuadraticGame", "BilinearGame", "MixedGame", "GANMixture",
           "IteratedPrisonersDilemma", "ipd_values"]
