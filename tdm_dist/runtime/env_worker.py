"""``EnvWorker``: one environment in a Ray actor — reset/step, simulator state, ground-truth rollouts, and
whole expert episodes run next to the simulator (no round trip per step).

The class is plain Python (testable without Ray); ``remote_env_worker()`` returns its Ray actor class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tdm_dist import envs
from tdm_dist.errors import ConfigError


@dataclass
class ExpertConfig:
    kind: str = "gt-mpc"  # "gt-mpc" (ground-truth MPC on the simulator), "random", or "rllib" (a trained policy)
    action_noise: float = 0.0  # std of Gaussian noise added to the expert's actions (expert-plus-noise)
    planner: dict = field(default_factory=dict)  # PlannerConfig fields overriding the expert's defaults
    checkpoint: str | None = None  # the RLlib checkpoint of kind "rllib" (`tdm expert train`)

    @classmethod
    def parse(cls, text: str, **fields) -> ExpertConfig:
        """``gt-mpc``, ``random`` or ``rllib:PATH``, as the CLI takes it."""
        if text.startswith("rllib:"):
            return cls(kind="rllib", checkpoint=text.removeprefix("rllib:"), **fields)
        if text not in ("gt-mpc", "random"):
            raise ConfigError(f"unknown expert {text!r}; expected gt-mpc, random or rllib:PATH")
        return cls(kind=text, **fields)

    def describe(self) -> dict:
        return asdict(self)


class EnvWorker:
    """Holds one environment instance; as a Ray actor (``remote_env_worker()``) every method is a remote call."""

    def __init__(self, env_name: str, seed: int | None = None, action_repeat: int = 1):
        self.action_repeat = action_repeat
        self.env = envs.make(env_name, seed=seed, action_repeat=action_repeat)
        self.reset_done = False  # False in a fresh (or restarted) actor: no episode to continue

    def spec(self) -> dict:
        return self.env.spec.to_dict()

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.reset_done = True
        return self.env.reset(seed)

    def step(self, action, expect_step: int | None = None) -> tuple[np.ndarray, float, bool]:
        """One environment step. ``expect_step``: the caller's count of steps taken since its reset; if this
        actor restarted since (a fresh env, never reset, or at another step) it raises ``EnvStateLost`` instead
        of stepping an env that is not the caller's."""
        if expect_step is not None and (not self.reset_done or self.env.steps != expect_step):
            from tdm_dist.runtime.agent import EnvStateLost

            at = f"at step {self.env.steps}" if self.reset_done else "restarted and not reset"
            raise EnvStateLost(f"{self.env.spec.name}: expected step {expect_step}, the env is {at}")
        return self.env.step(action)

    def get_state(self) -> np.ndarray:
        return self.env.get_state()

    def set_state(self, state: np.ndarray) -> None:
        self.env.set_state(state)

    def rollout(self, state: np.ndarray | None, actions: np.ndarray, observations: bool = False):
        """Ground truth for K action sequences [K, N, m] from ``state`` (default: the current state): rewards
        [K, N] (and observations [K, N, n] on request). The environment's own state is left as it was."""
        from tdm_dist.envs.rollout import rollout

        if state is None:
            return rollout(self.env, actions, observations=observations)
        saved = self.env.get_state()
        try:
            self.env.set_state(state)
            return rollout(self.env, actions, observations=observations)
        finally:
            self.env.set_state(saved)

    def collect_episode(
        self, episode_id: int, seed: int, expert: ExpertConfig, env: str | None = None, steps: int | None = None
    ) -> dict:
        """Run one episode with the expert and return it as a dataset row (see ``tdm_dist.data``).
        ``env``: play it in that environment (the worker switches to it and stays there). ``steps``: stop after
        that many steps (default: the whole episode)."""
        from tdm_dist.planning.ground_truth import GroundTruthExpert, expert_planner, random_policy, run_episode

        if env is not None and env != self.env.spec.name:
            self.env = envs.make(env, action_repeat=self.action_repeat)
            self.reset_done = False
        if expert.kind == "gt-mpc":
            planner = expert_planner(seed).replace(**expert.planner)
            policy = GroundTruthExpert(self.env.spec, planner, action_noise=expert.action_noise, seed=seed)
        elif expert.kind == "random":
            policy = random_policy(self.env.spec, np.random.default_rng(seed))
        elif expert.kind == "rllib":
            from tdm_dist.runtime.rllib_expert import RLlibPolicy

            policy = RLlibPolicy(expert.checkpoint)
        else:
            raise ConfigError(f"unknown expert {expert.kind!r}; expected gt-mpc, random or rllib")
        episode = run_episode(self.env, policy, seed, steps=steps)
        return {
            "env": self.env.spec.name,
            "episode_id": int(episode_id),
            "seed": int(seed),
            "expert": expert.kind,
            "expert_settings": expert.describe(),
            "spec": self.env.spec.to_dict(),
            **episode,
        }


def remote_env_worker(num_cpus: float = 1, **options):
    """The Ray actor class of ``EnvWorker`` with its resources (one CPU: MuJoCo is single-threaded)."""
    import ray

    return ray.remote(num_cpus=num_cpus, **options)(EnvWorker)
