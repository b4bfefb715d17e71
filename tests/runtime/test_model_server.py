"""``ModelServer`` on a real Ray runtime: concurrent requests merged into batched decodes that answer exactly
what the in-process TDM answers, bad requests failing only their own caller, and a pool pinning clients."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tdm_dist import envs
from tdm_dist.errors import ConfigError
from tdm_dist.learner.checkpoint import load_model, save_checkpoint
from tdm_dist.model import TDM, preset
from tdm_dist.planning.models import PlanState
from tdm_dist.runtime.model_server import ModelServerPool, Request, ServedModel, remote_model_server
from tdm_dist.tokenizer import History

ENV = "cartpole-swingup"  # n=5, m=1: 8 tokens per step, so a context of 128 fits horizons up to 15


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = TDM(preset("tiny", context=128))
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(path, model, env_specs={ENV: envs.spec(ENV).to_dict()})
    return path


@pytest.fixture(scope="module")
def server(checkpoint, ray_session):
    """One server for the module; a generous max_wait so that requests sent together meet in one batch."""
    ray = ray_session
    handle = remote_model_server(num_cpus=1, num_gpus=0).remote(str(checkpoint), max_batch=8, max_wait_ms=200, seed=0)
    ray.get(handle.describe.remote())  # loaded
    yield handle
    ray.kill(handle)


def histories(lengths, seed=0) -> list[History]:
    """Real cartpole interaction of the given lengths (timesteps), from random actions."""
    env = envs.make(ENV)
    rng = np.random.default_rng(seed)
    out = []
    for i, T in enumerate(lengths):
        obs, rew = [env.reset(seed=seed * 100 + i)], [0.0]
        acts = rng.uniform(-1, 1, size=(T - 1, 1))
        for a in acts:
            o, r, _ = env.step(a)
            obs.append(o)
            rew.append(r)
        out.append(History(np.array(obs, np.float32), np.array(rew, np.float32), acts.astype(np.float32)))
    return out


def test_concurrent_requests_are_merged_and_match_the_in_process_model(server, checkpoint, ray_session):
    ray = ray_session
    lengths = [1, 3, 7, 12, 20, 40]  # 40 steps (320 tokens) is longer than the context: the server truncates
    rng = np.random.default_rng(1)
    hs = histories(lengths)
    actions = [rng.uniform(-1, 1, size=(3, 4, 1)).astype(np.float32) for _ in hs]  # K=3, N=4
    before = ray.get(server.describe.remote())["stats"]
    requests = [Request("imagine", ENV, h, actions=a, greedy=True) for h, a in zip(hs, actions, strict=True)]
    refs = [server.imagine.remote(r) for r in requests]  # all sent at once
    results = ray.get(refs)
    stats = ray.get(server.describe.remote())["stats"]
    served, batches = stats["requests"] - before["requests"], stats["batches"] - before["batches"]
    assert served == len(hs)
    assert 1 <= batches < len(hs), stats  # merged: fewer batched decodes than requests

    model = load_model(checkpoint)
    reward_fn = envs.reward_fn(ENV)
    for h, a, got in zip(hs, actions, results, strict=True):
        want = model.imagine(h, torch.as_tensor(a), reward_fn=reward_fn, greedy=True)
        assert got.obs.shape == (3, 4, 5) and got.rewards.shape == (3, 4) and got.actions.shape == (3, 4, 1)
        np.testing.assert_allclose(got.obs, want.obs.double().numpy(), atol=1e-5)
        np.testing.assert_allclose(got.rewards, want.rewards.double().numpy(), atol=1e-5)
        np.testing.assert_allclose(got.actions, a, atol=1e-6)  # teacher-forced actions come back unchanged


def test_act_requests_return_bc_actions_in_bounds(server, ray_session):
    ray = ray_session
    hs = histories([2, 9], seed=3)
    refs = [server.act.remote(Request("act", ENV, h, samples=5)) for h in hs]
    for out in ray.get(refs):
        assert out.shape == (5, 1)
        assert np.all(np.isfinite(out)) and np.all(out >= -1) and np.all(out <= 1)
    served = ServedModel(server).act(PlanState(ENV, hs[0]), samples=3)  # the DynamicsModel view of the same
    assert served.shape == (3, 1) and np.all(np.abs(served) <= 1)


@pytest.mark.parametrize(
    "shape,match",
    [((3, 4, 2), r"actions \(or noise\) must be \[K >= 1, N >= 1, 1\]"), ((3, 16, 1), "horizon 16 does not fit")],
)
def test_a_bad_request_fails_its_caller_only(server, ray_session, shape, match):
    ray = ray_session
    h = histories([5], seed=4)[0]
    bad = server.imagine.remote(Request("imagine", ENV, h, actions=np.zeros(shape, np.float32)))
    good = server.imagine.remote(Request("imagine", ENV, h, actions=np.zeros((2, 3, 1), np.float32)))
    with pytest.raises(ConfigError, match=match) as info:  # Ray's error is also an instance of its cause's class
        ray.get(bad)
    assert isinstance(info.value, ray.exceptions.RayTaskError) and isinstance(info.value.cause, ConfigError)
    assert ray.get(good).rewards.shape == (2, 3)
    assert ray.get(server.describe.remote())["stats"]["requests"] > 0  # the server lives on


def test_pool_pins_clients_round_robin(checkpoint, ray_session):
    ray = ray_session
    with pytest.raises(ConfigError, match="at least one server"):
        ModelServerPool([])
    pool = ModelServerPool.start(str(checkpoint), count=2, num_cpus=0.5, num_gpus=0, max_wait_ms=0)
    try:
        assert len(pool.servers) == 2
        clients = [pool.client(i) for i in range(5)]
        assert [c.server for c in clients] == [pool.servers[i % 2] for i in range(5)]
        assert clients[0].server != clients[1].server
        info = pool.describe()
        assert info["context"] == 128 and ENV in info["env_specs"]
        assert info["threads"] == max(1, (os.cpu_count() or 1) // 2)  # two servers share the machine's cores
        # Each client's requests land on its own server: clients 0, 2, 4 -> server 0; 1, 3 -> server 1.
        h = histories([4], seed=5)[0]
        for c in clients:
            c.imagine(PlanState(ENV, h), np.zeros((2, 2, 1), np.float32))
        served = [ray.get(s.describe.remote())["stats"]["requests"] for s in pool.servers]
        assert served == [3, 2]
    finally:
        for s in pool.servers:
            ray.kill(s)


def test_a_seeded_pool_samples_reproducibly_and_each_server_from_its_own_stream(checkpoint, ray_session):
    ray = ray_session
    state = PlanState(ENV, histories([4], seed=5)[0])
    actions = np.random.default_rng(2).uniform(-1, 1, size=(8, 5, 1)).astype(np.float32)

    def sampled_obs(seed: int) -> list[np.ndarray]:
        pool = ModelServerPool.start(str(checkpoint), count=2, seed=seed, num_cpus=0.5, num_gpus=0, max_wait_ms=0)
        try:
            return [pool.client(i, greedy=False).imagine(state, actions).obs for i in range(2)]
        finally:
            for s in pool.servers:
                ray.kill(s)

    first, again = sampled_obs(7), sampled_obs(7)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # server 1 samples from seed 8, not 7


def test_a_local_server_merges_threads_requests_and_answers_as_the_in_process_model(checkpoint):
    """``LocalModelServer``: the same batching on a thread of this process, for one machine without Ray."""
    from concurrent.futures import ThreadPoolExecutor

    from tdm_dist.runtime.model_server import LocalModelServer

    server = LocalModelServer(str(checkpoint), max_batch=4, max_wait_ms=500, seed=0)
    try:
        hs = histories([2, 6, 11, 30])
        actions = [np.random.default_rng(i).uniform(-1, 1, size=(3, 4, 1)).astype(np.float32) for i in range(4)]
        clients = [ServedModel(server, greedy=True) for _ in hs]
        with ThreadPoolExecutor(4) as pool:  # four agents asking at once
            results = list(pool.map(lambda i: clients[i].imagine(PlanState(ENV, hs[i]), actions[i]), range(4)))
        stats = server.describe()["stats"]
        assert stats["requests"] == 4 and stats["batches"] < 4, stats  # merged
        model = load_model(checkpoint)
        for h, a, got in zip(hs, actions, results, strict=True):
            want = model.imagine(h, torch.as_tensor(a), reward_fn=envs.reward_fn(ENV), greedy=True)
            np.testing.assert_allclose(got.obs, want.obs.double().numpy(), atol=1e-5)
            np.testing.assert_allclose(got.rewards, want.rewards.double().numpy(), atol=1e-5)
        with pytest.raises(ConfigError, match="horizon 16 does not fit"):  # a bad request fails its caller
            clients[0].imagine(PlanState(ENV, hs[0]), np.zeros((2, 16, 1), np.float32))
    finally:
        server.close()
    assert not server.thread.is_alive()


def test_an_agent_plays_in_process_against_its_own_env_worker_through_a_local_server(checkpoint):
    from tdm_dist.planning.optimizers import PlannerConfig
    from tdm_dist.runtime.agent import AgentConfig, MPCAgent
    from tdm_dist.runtime.env_worker import EnvWorker
    from tdm_dist.runtime.model_server import LocalModelServer

    server = LocalModelServer(str(checkpoint), max_batch=1, max_wait_ms=0, seed=0)
    try:
        planner = PlannerConfig(samples=4, horizon=3, replan_every=2)
        agent = MPCAgent(
            AgentConfig(ENV, planner=planner, greedy=True, steps=7, context=128), server, worker=EnvWorker(ENV)
        )
        result = agent.run_episode(0, seed=5)
        again = MPCAgent(agent.cfg, server, worker=EnvWorker(ENV)).run_episode(0, seed=5)
        assert result["steps"] == 7 and np.isfinite(result["return"])
        assert server.describe()["stats"]["requests"] == 2 * 4  # a plan at steps 0, 2, 4, 6 of each episode
        assert again["return"] == result["return"]  # greedy decode, seeded planner: the same episode
    finally:
        server.close()
