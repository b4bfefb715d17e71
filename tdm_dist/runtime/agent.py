"""``MPCAgent``: plays whole episodes against its own EnvWorker, deciding every step by planning through a
model (a ModelServer's TDM or baseline, or the ground-truth simulator), by the TDM's BC policy, or at random.

The agent keeps the real history of the episode (paper §4: the TDM is conditioned on the real interaction,
not warm-started from its own imagination) and sends its most recent part, as much as the model's context
can use, with every request. The class is plain Python; ``remote_mpc_agent()`` is its Ray actor shell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tdm_dist import envs
from tdm_dist.baselines import NAMES as BASELINES
from tdm_dist.errors import ConfigError
from tdm_dist.planning.models import GroundTruthModel, ModelObjective, PlanState, call
from tdm_dist.planning.optimizers import MPCPlanner, PlannerConfig
from tdm_dist.runtime.env_worker import remote_env_worker
from tdm_dist.tokenizer import History, StepLayout

REFERENCES = ("ground-truth", "random")  # the models without a checkpoint
LEARNED = ("tdm", *BASELINES)  # the models a ModelServer serves from a checkpoint
MODELS = (*LEARNED, *REFERENCES)
POLICIES = ("mpc", "bc")


@dataclass
class AgentConfig:
    env: str  # registry name
    model: str = "tdm"  # "tdm" or a baseline (through a ModelServer), "ground-truth" (the simulator), "random"
    policy: str = "mpc"  # "mpc": plan every step; "bc": the TDM's own actions (its policy view, §3.1)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    objective: str = "auto"  # "auto", "obs" (eq. 5) or "predicted" (eq. 6); see planning.models.reward_function
    greedy: bool = False  # decode imagined tokens greedily instead of sampling them
    steps: int | None = None  # environment steps per episode (None: the spec's episode length, 1000)
    context: int = 1023  # the model's context in tokens: history beyond it is not sent
    prompt: dict | None = None  # an expert episode (observations, rewards, actions) put before the history (§5.2.2)

    def check(self) -> None:
        spec = envs.spec(self.env)
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.model != "tdm" and (self.policy == "bc" or self.planner.kind == "proposal"):
            raise ConfigError(
                f"the {self.policy if self.policy == 'bc' else 'proposal'} policy needs the TDM, not {self.model}"
            )
        spec.episode_steps(self.steps)


class EnvStateLost(RuntimeError):
    """The EnvWorker restarted in the middle of an episode: its simulator state is gone, the episode must rerun."""


class MPCAgent:
    """One agent: an episode at a time, against its own EnvWorker (an actor, or one in this process)."""

    def __init__(self, cfg: AgentConfig, server=None, worker_options: dict | None = None, worker=None):
        """``server``: a ModelServer actor, or a ``LocalModelServer`` in this process. ``worker``: an ``EnvWorker``
        in this process to play against instead of an actor of its own (one machine without Ray)."""
        from tdm_dist.runtime.model_server import ServedModel

        cfg.check()
        self.cfg, self.spec = cfg, envs.spec(cfg.env)
        if worker is None:
            # A crashed worker comes back (max_restarts) and calls to it wait for the new instance
            # (max_task_retries); the episode in flight fails there (EnvWorker.step's check: the new env is not
            # this episode's) and the evaluation reruns it from its seed.
            options = {"num_cpus": 0.5, "max_restarts": -1, "max_task_retries": -1, **(worker_options or {})}
            worker = remote_env_worker(**options).remote(cfg.env)
        self.worker = worker
        if cfg.model in LEARNED:
            if server is None:
                raise ConfigError(f"an agent of the {cfg.model} model needs a ModelServer")
            self.model = ServedModel(server, cfg.objective, cfg.greedy)
        elif cfg.model == "ground-truth":
            self.model = GroundTruthModel(self.worker)
        else:
            self.model = None
        self.done_steps = 0  # of the episode in progress, for progress bars

    def progress(self) -> int:
        return self.done_steps

    def run_episode(self, episode: int, seed: int) -> dict:
        """Play one episode from ``seed`` -> {episode, seed, return, steps, wall_s, plan_s}."""
        cfg, spec = self.cfg, self.spec
        steps = spec.episode_steps(cfg.steps)
        n, m = spec.obs_dim, spec.act_dim
        prompt = _prompt_arrays(cfg.prompt, n, m)
        # Timesteps of history the model can see: the rest is never sent.
        keep = cfg.context // StepLayout(n, m).tokens_per_step + 1
        observations = np.zeros((steps + 1, n), np.float32)
        rewards = np.zeros(steps + 1, np.float32)
        actions = np.zeros((steps, m), np.float32)
        planner = MPCPlanner(cfg.planner.replace(seed=seed), m)
        rng = np.random.default_rng([seed, 2])
        start, plan_s, self.done_steps = time.perf_counter(), 0.0, 0
        observations[0] = call(self.worker.reset, seed)
        for t in range(steps):
            tick = time.perf_counter()
            if self.model is None:
                action = rng.uniform(-1.0, 1.0, size=m)
            else:
                state = PlanState(cfg.env, _history(prompt, observations, rewards, actions, t, keep))
                if cfg.policy == "bc":
                    action = self.model.act(state)[0]
                else:
                    action = planner.plan(ModelObjective(self.model, state))
            plan_s += time.perf_counter() - tick
            obs, reward, _ = call(self.worker.step, action, t)
            observations[t + 1], rewards[t + 1], actions[t] = obs, reward, action
            self.done_steps = t + 1
        return {
            "episode": int(episode),
            "seed": int(seed),
            "return": float(rewards.sum()),
            "steps": steps,
            "wall_s": time.perf_counter() - start,
            "plan_s": plan_s,
        }


def _prompt_arrays(prompt: dict | None, n: int, m: int):
    """An expert episode as the steps before the current episode: (obs [T, n], rewards [T], actions [T, m]) whose
    last action leads into the current episode's first observation."""
    if prompt is None:
        return None
    obs, rew, act = (np.asarray(prompt[k], np.float32) for k in ("observations", "rewards", "actions"))
    if obs.shape[1:] != (n,) or act.shape[1:] != (m,):
        raise ConfigError(f"the prompt episode has dims ({obs.shape[1]}, {act.shape[1]}), the env ({n}, {m})")
    T = len(act)
    return obs[:T], rew[:T], act


def _history(prompt, observations, rewards, actions, t: int, keep: int) -> History:
    """The real interaction up to o_t, r_t (after the prompt, if any), its last ``keep`` timesteps."""
    obs, rew, act = observations[: t + 1], rewards[: t + 1], actions[:t]
    if prompt is not None:
        obs, rew, act = (np.concatenate([p, x]) for p, x in zip(prompt, (obs, rew, act), strict=True))
    start = max(0, len(obs) - keep)
    return History(obs[start:], rew[start:], act[start:])


def remote_mpc_agent(num_cpus: float = 0.5, **options):
    """The Ray actor class of ``MPCAgent``; two threads, so that ``progress()`` answers during an episode."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_concurrency=2, **options)(MPCAgent)
