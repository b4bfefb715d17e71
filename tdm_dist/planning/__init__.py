"""Planners: colored-noise sampling, random shooting and iCEM, the MPC layer, the ground-truth expert."""

from tdm_dist.planning.ground_truth import GroundTruthExpert, expert_planner, random_policy, run_episode
from tdm_dist.planning.noise import colored_noise
from tdm_dist.planning.optimizers import CEM, MPCPlanner, PlannerConfig, RandomShooting

__all__ = [
    "CEM",
    "GroundTruthExpert",
    "MPCPlanner",
    "PlannerConfig",
    "RandomShooting",
    "colored_noise",
    "expert_planner",
    "random_policy",
    "run_episode",
]
