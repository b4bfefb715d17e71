"""``tdm eval``: the mean return of an agent over episodes, run by MPCAgent actors in parallel.

A result is the mean return over the episodes with a 68% confidence interval (± one standard error), the
per-episode returns, environment steps per second, and the settings and checkpoint that produced them
(DESIGN, Evaluation). Episode ``i`` always starts from seed ``seed * 1_000_000 + i``; an episode whose agent,
EnvWorker or ModelServer crashed is rerun from that seed, so a result holds exactly the requested episodes,
each once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from tdm_dist import envs
from tdm_dist.errors import ConfigError, TdmError
from tdm_dist.planning.models import reward_function
from tdm_dist.planning.optimizers import PlannerConfig
from tdm_dist.runtime.agent import LEARNED, REFERENCES, AgentConfig, remote_mpc_agent
from tdm_dist.runtime.cluster import init_ray
from tdm_dist.runtime.collect import episode_seed
from tdm_dist.tokenizer import StepLayout

MAX_ATTEMPTS = 3  # runs of one episode before the evaluation gives up on it


@dataclass
class EvalConfig:
    env: str  # registry name
    model: str = "tdm"  # "tdm", a baseline (tdm_dist.baselines.NAMES), "ground-truth" or "random"
    checkpoint: str | None = None  # the TDM's or baseline's checkpoint (file, checkpoint folder or run folder)
    policy: str = "mpc"  # "mpc" or "bc" (the TDM's own actions)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    objective: str = "auto"  # "auto", "obs" (eq. 5) or "predicted" (eq. 6)
    greedy: bool = False  # decode imagined tokens greedily
    episodes: int = 4  # episodes in the result (paper: >= 4)
    agents: int = 4  # MPCAgent actors playing episodes at once
    steps: int | None = None  # environment steps per episode (None: 1000)
    seed: int = 0  # episode i starts from seed * 1_000_000 + i
    servers: int = 1  # ModelServer actors (TDM and baselines)
    max_batch: int = 16  # requests one batched decode may merge
    max_wait_ms: float = 5.0  # the longest a request waits for others to join its batch
    prompt: str | None = None  # a dataset whose first episode of env prompts the TDM (§5.2.2)

    def replace(self, **changes) -> EvalConfig:
        return dataclasses.replace(self, **changes)

    def agent_config(self, context: int = 1023, prompt: dict | None = None) -> AgentConfig:
        return AgentConfig(
            env=self.env,
            model=self.model,
            policy=self.policy,
            planner=self.planner,
            objective=self.objective,
            greedy=self.greedy,
            steps=self.steps,
            context=context,
            prompt=prompt,
        )

    def check(self) -> dict | None:
        """Every bad setting raises here, before any actor starts; returns the checkpoint's contents (TDM)."""
        spec = envs.spec(self.env)
        self.agent_config().check()
        for name in ("episodes", "agents", "servers", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.model in REFERENCES:
            if self.checkpoint or self.prompt:
                raise ConfigError(f"--ckpt and --prompt are for a learned model, not {self.model}")
            return None
        if self.prompt and self.model != "tdm":
            raise ConfigError(f"--prompt is for the TDM, not the {self.model} baseline")
        if not self.checkpoint:
            raise ConfigError(f"the {self.model} model needs a checkpoint (--ckpt)")
        from tdm_dist.learner.checkpoint import load_checkpoint, model_kind, resolve_checkpoint

        payload = load_checkpoint(self.checkpoint)
        kind = model_kind(payload)
        if kind != self.model:
            raise ConfigError(f"{resolve_checkpoint(self.checkpoint)} holds a {kind} model, not a {self.model}")
        check_env_matches(payload.get("env_specs") or {}, spec)
        reward_function(self.env, self.objective)
        if self.policy == "mpc" and kind == "tdm":
            context = payload["model_config"]["context"]
            StepLayout(spec.obs_dim, spec.act_dim).check_horizon(self.planner.horizon, context)
        return payload


def check_env_matches(trained: dict[str, dict], spec) -> None:
    """A specialist (trained on one environment) only takes environments of its layout; a generalist any."""
    if len(trained) != 1:  # a generalist, or a checkpoint that does not say: nothing to check against
        return
    ((name, stored),) = trained.items()
    seen = envs.EnvSpec.from_dict(stored)
    n, m = seen.obs_dim, seen.act_dim
    if (spec.obs_dim, spec.act_dim) != (n, m):
        raise ConfigError(
            f"{spec.name} has {spec.obs_dim} observation and {spec.act_dim} action entries, but the checkpoint was "
            f"trained on {name} ({n} and {m}); only a generalist (trained on several environments) takes another"
        )


def summarize(returns: list[float]) -> tuple[float, float]:
    """(mean, 68% confidence half-width = one standard error; 0 for a single episode)."""
    r = np.asarray(returns, dtype=np.float64)
    sem = float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0
    return float(r.mean()), sem


def evaluate(cfg: EvalConfig, address: str | None = None, progress: bool = True, pool=None, on_episode=None) -> dict:
    """Run ``cfg.episodes`` episodes on ``cfg.agents`` MPCAgent actors -> the result (see module docstring).

    ``pool``: ModelServers already running (a sweep shares them across trials); else this call starts
    ``cfg.servers`` of them for a TDM and stops them at the end. ``on_episode(returns)``: called with the
    returns of the episodes finished so far (in the order they finished) after each one (a sweep reports
    them to Tune, whose schedulers may stop a poor trial early).
    """
    import ray

    from tdm_dist.runtime.model_server import ModelServerPool

    payload = cfg.check()
    prompt = _read_prompt(cfg.prompt, cfg.env) if cfg.prompt else None
    own_pool = cfg.model in LEARNED and pool is None
    count = min(cfg.agents, cfg.episodes)
    # A CPU per agent (the agent and its EnvWorker take half each) and per ModelServer: with fewer, a local
    # instance would leave actors pending and the evaluation waiting for them forever.
    init_ray(address, min_cpus=count + (cfg.servers if own_pool else 0))
    if own_pool:
        pool = ModelServerPool.start(
            cfg.checkpoint, cfg.servers, seed=cfg.seed, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms
        )
    context = payload["model_config"].get("context", 1023) if payload else 1023  # a baseline has none
    agent_cfg = cfg.agent_config(context, prompt)
    Agent = remote_mpc_agent()

    def new_agent(i: int):
        return Agent.remote(agent_cfg, pool.server_for(i) if pool else None)

    agents = [new_agent(i) for i in range(count)]
    steps = cfg.steps or envs.spec(cfg.env).episode_length
    bar = tqdm(total=cfg.episodes * steps, desc=f"eval {cfg.model} {cfg.env}", unit="step", disable=not progress)
    results: dict[int, dict] = {}
    attempts = {i: 0 for i in range(cfg.episodes)}
    queue, running, reruns = deque(range(cfg.episodes)), {}, 0
    start = time.perf_counter()
    try:
        while queue or running:
            for a in range(count):  # every idle agent takes the next episode
                if queue and a not in {owner for owner, _ in running.values()}:
                    episode = queue.popleft()
                    attempts[episode] += 1
                    running[agents[a].run_episode.remote(episode, episode_seed(cfg.seed, episode))] = (a, episode)
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                a, episode = running.pop(ref)
                try:
                    results[episode] = ray.get(ref)
                    if on_episode is not None:
                        on_episode([r["return"] for r in results.values()])
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, TdmError):
                        raise cause from None
                    if attempts[episode] >= MAX_ATTEMPTS:
                        raise RuntimeError(f"episode {episode} failed {MAX_ATTEMPTS} times; last error: {e}") from e
                    queue.appendleft(episode)  # rerun it from its seed
                    reruns += 1
                    if not _alive(agents[a]):  # the agent itself crashed: a new one takes its place
                        agents[a] = new_agent(a)
            _update_bar(bar, results, running, agents, steps)
    finally:
        bar.close()
        for agent in agents:
            ray.kill(agent)
        if own_pool:
            for server in pool.servers:
                ray.kill(server)
    wall = time.perf_counter() - start
    returns = [results[i]["return"] for i in range(cfg.episodes)]
    mean, ci68 = summarize(returns)
    return {
        "env": cfg.env,
        "model": cfg.model,
        "policy": cfg.policy,
        "checkpoint": cfg.checkpoint,
        "mean_return": mean,
        "ci68": ci68,
        "returns": returns,
        "episodes": [results[i] for i in range(cfg.episodes)],
        "reruns": reruns,
        "env_steps_per_s": cfg.episodes * steps / wall,
        "wall_s": wall,
        "settings": {**dataclasses.asdict(cfg), "planner": dataclasses.asdict(cfg.planner)},
    }


def _alive(agent) -> bool:
    import ray

    try:
        ray.get(agent.progress.remote(), timeout=60)
        return True
    except (ray.exceptions.RayError, TimeoutError):
        return False


def _update_bar(bar, results, running, agents, steps) -> None:
    import ray

    partial = 0
    if running:
        with contextlib.suppress(ray.exceptions.RayError):  # an agent restarting: its progress shows up next time
            partial = sum(ray.get([agents[a].progress.remote() for a, _ in running.values()], timeout=5))
    bar.n = len(results) * steps + partial
    if results:
        mean, ci = summarize([r["return"] for r in results.values()])
        bar.set_postfix(mean_return=f"{mean:.1f}±{ci:.1f}", episodes=len(results), refresh=False)
    bar.refresh()


def _read_prompt(path: str, env: str) -> dict:
    from tdm_dist.data import read_episodes

    episodes = read_episodes(path, env)
    if episodes:
        return episodes[0]
    raise ConfigError(f"the prompt dataset {path} has no episode of {env}")
