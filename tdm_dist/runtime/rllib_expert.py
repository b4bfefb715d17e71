"""A model-free expert: SAC trained with RLlib (new API stack), then played by its policy network alone.

``train_sac`` trains on ``GymEnv`` and saves an RLlib algorithm checkpoint plus ``tdm_expert.json`` (the env and
the settings it was trained with). ``RLlibPolicy`` loads only the RLModule from that checkpoint, no Algorithm,
EnvRunner or Ray, so it is cheap inside an ``EnvWorker`` actor, and implements the ``Policy`` protocol of
``planning/ground_truth.py``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tdm_dist.envs.env import Env
from tdm_dist.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

RLLIB_ENV = "tdm_dist/gym"  # RLlib's registered name of ``envs.gym.make_gym_env``; env_config picks the task
META_FILE = "tdm_expert.json"  # written next to RLlib's own files in the checkpoint directory
RETURN_WINDOW = 5  # episodes the reported train/return_mean averages over (exploring policy)


@dataclass
class SACSettings:
    hidden: tuple[int, ...] = (256, 256)  # units of the policy and Q networks' hidden layers
    batch_size: int = 128  # transitions per gradient step (RLlib builds one episode object per transition)
    actor_lr: float = 3e-4  # Adam learning rate of the policy
    critic_lr: float = 3e-4  # Adam learning rate of the twin Q networks
    alpha_lr: float = 3e-4  # Adam learning rate of the entropy temperature
    initial_alpha: float = 0.1  # starting entropy temperature (RLlib's 1.0 is slow to decay on dm_control)
    gamma: float = 0.99  # discount per environment step
    tau: float = 0.005  # Polyak rate of the target Q networks
    warmup_steps: int = 1000  # environment steps sampled before the first gradient step
    buffer_size: int = 100_000  # replay capacity in environment steps
    fragment: int = 8  # environment steps per sampling call; fewer calls, same data (RLlib overhead per call)
    updates_per_step: float = 1.0  # gradient steps per sampled environment step (update-to-data ratio)
    steps_per_iteration: int = 1000  # environment steps per training iteration (one episode by default)
    action_repeat: int = 1  # simulator steps per environment step; the expert must be played with the same
    torch_threads: int = 1  # intra-op threads of the learner; more than 1 is ~10x slower on a busy 2-core box

    def __post_init__(self):
        positive = ("batch_size", "buffer_size", "fragment", "steps_per_iteration", "action_repeat", "torch_threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"SACSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ConfigError(f"SACSettings.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.updates_per_step > 0:
            raise ConfigError(f"SACSettings.updates_per_step must be > 0, got {self.updates_per_step}")


def sac_config(env_name: str, settings: SACSettings, seed: int = 0, num_env_runners: int = 0):
    """The RLlib ``SACConfig`` of ``train_sac`` (registers ``RLLIB_ENV`` as a side effect)."""
    from ray.rllib.algorithms.sac import SACConfig
    from ray.tune.registry import register_env

    from tdm_dist.envs.gym import make_gym_env

    register_env(RLLIB_ENV, make_gym_env)
    s = settings
    return (
        SACConfig()
        .environment(env=RLLIB_ENV, env_config={"name": env_name, "action_repeat": s.action_repeat})
        .env_runners(num_env_runners=num_env_runners, rollout_fragment_length=s.fragment)
        .training(
            gamma=s.gamma,
            tau=s.tau,
            initial_alpha=s.initial_alpha,
            actor_lr=s.actor_lr,
            critic_lr=s.critic_lr,
            alpha_lr=s.alpha_lr,
            train_batch_size_per_learner=s.batch_size,
            num_steps_sampled_before_learning_starts=s.warmup_steps,
            # RLlib counts intensity in replayed transitions per sampled one: batch_size of them per update.
            training_intensity=s.updates_per_step * s.batch_size,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": s.buffer_size},
        )
        .rl_module(model_config={"fcnet_hiddens": list(s.hidden), "fcnet_activation": "relu"})
        .reporting(
            min_time_s_per_iteration=0,
            min_sample_timesteps_per_iteration=s.steps_per_iteration,
            metrics_num_episodes_for_smoothing=RETURN_WINDOW,  # RLlib's 100 would average over the whole run
        )
        .debugging(seed=seed)
    )


def train_sac(
    env_name: str,
    out_dir: str | Path,
    iterations: int,
    seed: int = 0,
    num_env_runners: int = 0,
    settings: SACSettings | None = None,
    progress: bool = True,
) -> Path:
    """Train SAC on ``env_name`` for ``iterations`` x ``settings.steps_per_iteration`` env steps -> checkpoint dir.

    Uses the Ray instance already running, else starts (and afterwards stops) a local one. ``num_env_runners=0``
    samples in this process, which is the fastest on a small machine; 1 moves sampling to an actor.
    """
    import ray
    import torch
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

    from tdm_dist import envs
    from tdm_dist.runtime.cluster import init_ray

    settings = settings or SACSettings()
    envs.spec(env_name, settings.action_repeat)  # unknown names fail here, not inside an RLlib actor
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    out_dir = Path(out_dir).resolve()
    started = not ray.is_initialized()
    init_ray()
    algo, threads = None, torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)  # the learner runs in this process when num_learners=0
    try:
        algo = sac_config(env_name, settings, seed, num_env_runners).build_algo()
        return_mean = math.nan
        bar = tqdm(range(iterations), desc=f"sac {env_name}", disable=not progress)
        for it in bar:
            result = algo.train()
            runners = result.get(ENV_RUNNER_RESULTS, {})
            return_mean = float(runners.get(EPISODE_RETURN_MEAN, math.nan))
            steps = int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
            bar.set_postfix(steps=steps, ret=f"{return_mean:.1f}")
            log.info("sac %s iter %d: env steps %d, train/return_mean %.1f", env_name, it + 1, steps, return_mean)
        out_dir.mkdir(parents=True, exist_ok=True)
        algo.save_to_path(str(out_dir))
    finally:
        if algo is not None:
            algo.stop()
        torch.set_num_threads(threads)
        if started:
            ray.shutdown()
    meta = {
        "algorithm": f"SAC (RLlib {ray.__version__}, new API stack)",
        "env": env_name,
        "seed": seed,
        "iterations": iterations,
        "env_steps": steps,
        "return_mean": None if math.isnan(return_mean) else return_mean,
        "settings": asdict(settings),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def _module_dir(checkpoint: Path) -> Path:
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

    return checkpoint / COMPONENT_LEARNER_GROUP / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID


class RLlibPolicy:
    """The deterministic SAC policy of an RLlib checkpoint: ``tanh`` of the Gaussian's mean, in [-1, 1]^m.

    RLlib's own deterministic action (``TorchSquashedGaussian.to_deterministic``) is the *unsquashed* mean,
    later clipped to the bounds; the squashed mean is the action SAC's actor loss actually optimises.
    """

    def __init__(self, checkpoint_path: str | Path):
        import torch
        from ray.rllib.core.rl_module.rl_module import RLModule

        path = Path(checkpoint_path)
        module_dir = _module_dir(path)
        if not module_dir.is_dir():
            raise CheckpointError(
                f"{path} is not an RLlib algorithm checkpoint: expected the RLModule at "
                f"{module_dir.relative_to(path)} inside it (train one with `train_sac`)"
            )
        try:
            self.module = RLModule.from_checkpoint(module_dir)
        except Exception as e:
            raise CheckpointError(f"cannot load the RLModule of RLlib checkpoint {path}: {e}") from e
        self.module.eval()
        self.meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        self.obs_dim = int(np.prod(self.module.observation_space.shape))
        self.act_dim = int(np.prod(self.module.action_space.shape))
        self.path, self._torch = path, torch

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the policy is deterministic and stateless."""

    def act(self, env: Env) -> np.ndarray:
        """-> action [m] in [-1, 1] for the env's current observation."""
        trained = (self.meta.get("env"), self.meta.get("settings", {}).get("action_repeat"))
        if self.meta and trained != (env.spec.name, env.spec.action_repeat):
            raise ConfigError(
                f"the RLlib expert at {self.path} was trained on {trained[0]} with action_repeat {trained[1]}, "
                f"not {env.spec.name} with action_repeat {env.spec.action_repeat}"
            )
        obs = env.observation()
        if obs.shape != (self.obs_dim,):
            raise DataError(f"{env.spec.name} observations have shape {obs.shape}, the expert expects {self.obs_dim}")
        return self.act_obs(obs)

    def act_obs(self, obs: np.ndarray) -> np.ndarray:
        """obs [n] -> action [m] in [-1, 1]."""
        from ray.rllib.core.columns import Columns

        torch = self._torch
        with torch.no_grad():
            batch = {Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)[None]}
            logits = self.module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS][0]  # [2m]: mean, log-std
            mean = logits[: self.act_dim]
            return torch.tanh(mean).numpy().astype(np.float64)
