"""Environment registry: dm_control suite tasks, each with its ``EnvSpec`` and ``reward_from_obs``."""

from tdm_dist.envs.env import Env
from tdm_dist.envs.registry import make, names, reward_fn, reward_from_obs, spec
from tdm_dist.envs.spec import EnvSpec

__all__ = ["Env", "EnvSpec", "make", "names", "reward_fn", "reward_from_obs", "spec"]
