"""``evaluate`` (``tdm eval``) on a real Ray runtime: MPCAgent actors, EnvWorkers, ModelServers, real MuJoCo.

The fault tests kill an actor's process in the middle of an evaluation and check that the result still
holds exactly the requested episodes, each once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tdm_dist.planning.optimizers import PlannerConfig
from tdm_dist.runtime.collect import episode_seed
from tdm_dist.runtime.evaluate import EvalConfig, evaluate
from tdm_dist.runtime.model_server import ModelServerPool

ENV = "cartpole-swingup"


def actors(class_name: str) -> dict[str, dict]:
    """Actor id -> {State, Pid, NumRestarts, ...} of every actor of this class, straight from the GCS.

    ``ray.util.state.list_actors`` needs the dashboard's API server, which the test session's Ray (and a
    ``tdm`` run's) does not start; the GCS actor table has the same facts.
    """
    from ray._private import state

    return {aid: info for aid, info in state.actors().items() if info["ActorClassName"] == class_name}


def check_exact(result: dict, episodes: int) -> None:
    assert len(result["returns"]) == episodes
    assert [e["episode"] for e in result["episodes"]] == list(range(episodes))
    assert [e["seed"] for e in result["episodes"]] == [episode_seed(0, i) for i in range(episodes)]
    assert result["returns"] == [e["return"] for e in result["episodes"]]
    assert all(np.isfinite(result["returns"]))


@pytest.mark.parametrize("model", ["ground-truth", "random"])
def test_evaluate_returns_exactly_the_requested_episodes_reproducibly(ray_session, model):
    cfg = EvalConfig(env=ENV, model=model, planner=PlannerConfig(samples=8, horizon=5), episodes=3, agents=2, steps=20)
    result = evaluate(cfg, progress=False)
    check_exact(result, 3)
    returns = np.array(result["returns"])
    assert result["mean_return"] == pytest.approx(returns.mean())
    assert result["ci68"] == pytest.approx(returns.std(ddof=1) / np.sqrt(3))
    assert all(e["steps"] == 20 for e in result["episodes"])
    assert result["reruns"] == 0 and result["checkpoint"] is None and result["model"] == model
    assert result["settings"]["planner"]["samples"] == 8 and result["env_steps_per_s"] > 0
    # The simulator, the planner and the random policy are all seeded per episode: a rerun is the same result.
    assert evaluate(cfg, progress=False)["returns"] == result["returns"]
    assert len(set(result["returns"])) > 1  # ... and episodes differ from each other (their seeds do)


def test_evaluate_a_tdm_checkpoint(ray_session, checkpoint):
    cfg = EvalConfig(
        env=ENV, checkpoint=checkpoint, planner=PlannerConfig(samples=4, horizon=3), episodes=2, agents=2, steps=10
    )
    result = evaluate(cfg, progress=False)
    check_exact(result, 2)
    assert result["model"] == "tdm" and result["checkpoint"] == checkpoint
    assert result["settings"]["checkpoint"] == checkpoint and result["settings"]["planner"]["horizon"] == 3
    assert all(e["steps"] == 10 and e["plan_s"] > 0 for e in result["episodes"])
    # Cartpole's reward is in [0, 1] per step; a random model's plans still earn some of it.
    assert all(0 <= r <= 10 for r in result["returns"])


# ---------------------------------------------------------------------------------------------- faults

FAULT_CFG = dict(env=ENV, planner=PlannerConfig(samples=8, horizon=5), episodes=4, agents=2, steps=60)


class Background:
    """``evaluate`` in a thread, its result or exception kept."""

    def __init__(self, cfg: EvalConfig, **kwargs):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(cfg,), kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, cfg, **kwargs):
        try:
            self.result = evaluate(cfg, progress=False, **kwargs)
        except BaseException as e:  # re-raised by join
            self.error = e

    def join(self, timeout: float = 600) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the evaluation did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for(condition, timeout: float = 240, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killing_an_env_worker_mid_eval_reruns_its_episode(ray_session, checkpoint):
    ray = ray_session
    # The evaluation gets a server of ours, so that its request count tells how far the agents are.
    # One decode thread: two OpenMP threads on a busy 2-core machine make every decode ~10x slower.
    pool = ModelServerPool.start(checkpoint, 1, num_cpus=1, num_gpus=0, max_wait_ms=5, threads=1)
    server = pool.servers[0]
    try:
        ray.get(server.describe.remote())
        old = set(actors("EnvWorker"))
        run = Background(EvalConfig(checkpoint=checkpoint, **FAULT_CFG), pool=pool)

        def alive_workers():
            alive = [i for aid, i in actors("EnvWorker").items() if aid not in old and i["State"] == "ALIVE"]
            return alive if len(alive) == 2 else None

        workers = wait_for(alive_workers, what="the agents' EnvWorkers")
        # Both agents are well into their first episode (20 plans of 60 steps, 2 agents) when the worker dies.
        base = ray.get(server.describe.remote())["stats"]["requests"]
        wait_for(lambda: ray.get(server.describe.remote())["stats"]["requests"] >= base + 20, what="planning")
        assert run.thread.is_alive(), "the evaluation ended before the kill"
        victim = workers[0]
        os.kill(victim["Pid"], signal.SIGKILL)
        result = run.join()
    finally:
        for s in pool.servers:
            ray.kill(s)
    check_exact(result, 4)
    assert all(e["steps"] == 60 for e in result["episodes"])
    assert result["reruns"] >= 1  # the episode in flight failed and ran again from its seed
    assert actors("EnvWorker")[victim["ActorID"]]["NumRestarts"] >= 1


def test_killing_the_model_server_mid_eval_loses_no_episode(ray_session, checkpoint):
    old = set(actors("ModelServer"))
    run = Background(EvalConfig(checkpoint=checkpoint, **FAULT_CFG))

    def alive_server():
        alive = [i for aid, i in actors("ModelServer").items() if aid not in old and i["State"] == "ALIVE"]
        return alive[0] if alive else None

    server = wait_for(alive_server, what="the evaluation's ModelServer")
    time.sleep(2.0)  # the agents are planning through it by now
    assert run.thread.is_alive(), "the evaluation ended before the kill"
    os.kill(server["Pid"], signal.SIGKILL)
    result = run.join()
    check_exact(result, 4)
    assert all(e["steps"] == 60 for e in result["episodes"])
    assert actors("ModelServer")[server["ActorID"]]["NumRestarts"] >= 1  # restarted, its requests retried there
    wait_for(lambda: actors("ModelServer")[server["ActorID"]]["State"] == "DEAD", 60, "evaluate to stop its server")


def kill_and_step(ray, worker, seed: int, done_steps: int):
    """Reset ``worker`` to ``seed``, take ``done_steps`` steps, kill its process, then step it again as an agent
    would (expecting step ``done_steps``), once the actor is back."""
    ray.get(worker.reset.remote(seed))
    for t in range(done_steps):
        ray.get(worker.step.remote(np.zeros(1), t))
    os.kill(actors("EnvWorker")[worker._actor_id.hex()]["Pid"], signal.SIGKILL)
    for _ in range(100):
        try:
            return ray.get(worker.step.remote(np.zeros(1), done_steps))
        except ray.exceptions.RayActorError:  # without task retries the call may reach the dead process
            time.sleep(0.2)
    raise AssertionError("the EnvWorker never came back")


@pytest.fixture
def restartable_worker(ray_session):
    from tdm_dist.runtime.env_worker import remote_env_worker

    # The options MPCAgent gives its worker: restarted after a crash, calls waiting for the new instance.
    worker = remote_env_worker(num_cpus=0.5, max_restarts=-1, max_task_retries=-1).remote(ENV)
    yield worker
    ray_session.kill(worker)


def test_a_restarted_worker_refuses_to_continue_an_episode(ray_session, restartable_worker):
    from tdm_dist.runtime.agent import EnvStateLost

    with pytest.raises(EnvStateLost, match="expected step 3"):
        kill_and_step(ray_session, restartable_worker, episode_seed(0, 0), done_steps=3)
    # After a reset the restarted worker plays on normally.
    assert ray_session.get(restartable_worker.reset.remote(1)).shape == (5,)
    _, reward, done = ray_session.get(restartable_worker.step.remote(np.zeros(1), 0))
    assert np.isfinite(reward) and not done


def test_a_restarted_worker_refuses_the_first_step(ray_session, restartable_worker):
    """Between reset and step 0 a fresh env is at step 0 too: it must not be stepped as the caller's episode."""
    from tdm_dist.runtime.agent import EnvStateLost

    with pytest.raises(EnvStateLost):
        kill_and_step(ray_session, restartable_worker, episode_seed(0, 0), done_steps=0)


def test_killing_an_agent_mid_eval_replaces_it_and_reruns_its_episode(ray_session, checkpoint):
    old = set(actors("MPCAgent"))
    run = Background(EvalConfig(checkpoint=checkpoint, **FAULT_CFG))

    def alive_agents():
        alive = [i for aid, i in actors("MPCAgent").items() if aid not in old and i["State"] == "ALIVE"]
        return alive if len(alive) == 2 else None

    victim = wait_for(alive_agents, what="the evaluation's agents")[0]
    time.sleep(2.0)  # both are playing an episode by now
    assert run.thread.is_alive(), "the evaluation ended before the kill"
    os.kill(victim["Pid"], signal.SIGKILL)
    result = run.join()
    check_exact(result, 4)
    assert result["reruns"] >= 1
    assert len(set(actors("MPCAgent")) - old) == 3  # two agents, and the one that replaced the killed one
