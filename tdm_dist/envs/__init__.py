"""Environment registry: dm_control suite tasks, their randomized variants and the procedural walkers, each with its
``EnvSpec`` (and ``reward_from_obs`` where the reward is a function of the observation)."""

import warnings

# dm_control imports glfw, which warns on every import on a machine without a display; rendering does
# not need it (MUJOCO_GL=egl or osmesa), so the warning is noise.
warnings.filterwarnings("ignore", message=r".*DISPLAY environment variable is missing.*")

from tdm_dist.envs.env import Env  # noqa: E402
from tdm_dist.envs.registry import expand, make, names, reward_fn, reward_from_obs, spec  # noqa: E402
from tdm_dist.envs.spec import EnvSpec  # noqa: E402

__all__ = ["Env", "EnvSpec", "expand", "make", "names", "reward_fn", "reward_from_obs", "spec"]
