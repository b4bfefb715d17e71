"""``ModelServer``: a TDM (or a baseline) behind a Ray actor that merges concurrent requests into batched decodes.

Agents send ``imagine`` and ``act`` requests; the server queues them and, once the first request of a batch
has waited ``max_wait_ms`` (or ``max_batch`` requests are queued, or the previous decode has just finished
and requests piled up meanwhile), decodes everything it holds at once: requests of one layout and shape
(same n, m, K, N, objective kind) are one ``TDM.imagine_batch`` call, the rest run one group after another.
A request never waits for a batch longer than ``max_wait_ms`` plus the decode in progress. A baseline's
checkpoint is served the same way (``baselines.model.imagine_many``: one rollout per horizon).

It is a plain async actor rather than a Ray Serve deployment: agents are Ray actors already, so a handle
call is the whole transport (no HTTP proxy or controller processes on a 2-core machine), and batching
needs the grouping by layout that ``serve.batch`` would leave to us anyway. ``experiments/benchmarks/serve.py``
measures what the actor costs against an in-process decode.

``ModelServerPool`` puts several servers behind one picklable handle; each agent is pinned to one server.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from tdm_dist.errors import ConfigError
from tdm_dist.planning.models import PlanState, Prediction, call, reward_function
from tdm_dist.tokenizer import History


@dataclass
class Request:
    """One agent's question. ``actions`` [K, N, m] to score, or ``noise`` [K, N, m] for proposals; for
    ``act``, ``samples`` BC actions. ``objective`` picks eq. 5 or 6 (see ``planning.models.reward_function``)."""

    kind: str  # "imagine" or "act"
    env: str
    history: History
    actions: np.ndarray | None = None
    noise: np.ndarray | None = None
    objective: str = "auto"
    samples: int = 1
    greedy: bool = False

    def group(self, decode_rewards: bool) -> tuple:
        """Requests with equal groups are decoded together."""
        layout = self.history.layout
        given = self.actions if self.actions is not None else self.noise
        shape = None if given is None else tuple(given.shape)
        return (
            self.kind,
            layout.obs_dim,
            layout.act_dim,
            shape,
            self.actions is None,
            decode_rewards,
            self.greedy,
            self.samples,
        )


class ModelServer:
    """Loads a checkpoint once; serves ``imagine`` and ``act`` to many agents with dynamic batching."""

    def __init__(
        self,
        checkpoint: str,
        device: str | None = None,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        threads: int | None = None,
        seed: int | None = None,
    ):
        from tdm_dist.learner.checkpoint import load_checkpoint, load_model, model_kind

        if max_batch < 1 or max_wait_ms < 0:
            raise ConfigError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Ray sets OMP_NUM_THREADS to the actor's CPUs; a CPU decode wants the cores there are. OpenMP's thread
        # count is per calling thread, so it is set in the decode thread itself (measured: 2x on 2 cores).
        threads = (threads or os.cpu_count() or 1) if device == "cpu" else torch.get_num_threads()
        self.checkpoint, self.threads = str(checkpoint), threads
        payload = load_checkpoint(checkpoint)
        self.kind, self.env_specs = model_kind(payload), payload.get("env_specs", {})
        if self.kind == "tdm":
            self.model = load_model(checkpoint, device)
        else:
            from tdm_dist.baselines import load_baseline

            self.model = load_baseline(checkpoint, device)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.generator = torch.Generator(self.model.device)
        self.generator.manual_seed(seed) if seed is not None else self.generator.seed()
        # One decode at a time, off the event loop so that requests keep arriving meanwhile.
        self.executor = ThreadPoolExecutor(max_workers=1, initializer=torch.set_num_threads, initargs=(threads,))
        self.queue: asyncio.Queue | None = None
        self.stats = {"requests": 0, "batches": 0, "decodes": 0, "decode_s": 0.0}

    # ------------------------------------------------------------------ requests

    async def imagine(self, request: Request) -> Prediction:
        self._check(request)
        return await self._submit(request)

    async def act(self, request: Request) -> np.ndarray:
        """-> [samples, m] BC actions."""
        self._check(request)
        return await self._submit(request)

    def describe(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "model": self.kind,
            "device": str(self.model.device),
            "threads": self.threads,  # torch's threads for a decode
            "context": getattr(self.model.cfg, "context", None),  # a baseline has none
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "env_specs": self.env_specs,
            "stats": dict(self.stats),
        }

    def _check(self, request: Request) -> None:
        """Reject a bad request before it joins a batch, so it cannot fail anyone else's."""
        if request.kind not in ("imagine", "act"):
            raise ConfigError(f"request kind must be imagine or act, got {request.kind!r}")
        layout = request.history.layout
        if self.kind != "tdm":
            if request.kind == "act" or request.actions is None:
                raise ConfigError(f"the {self.kind} baseline has no policy: no BC actions, no proposal planner")
            if (layout.obs_dim, layout.act_dim) != (self.model.obs_dim, self.model.act_dim):
                raise ConfigError(
                    f"the {self.kind} baseline models {self.model.obs_dim} observation and {self.model.act_dim} "
                    f"action entries, the request has {layout.obs_dim} and {layout.act_dim}"
                )
        else:
            self.model.check_layout(layout.obs_dim, layout.act_dim)
        if request.kind == "act":
            return
        reward_function(request.env, request.objective)
        given = request.actions if request.actions is not None else request.noise
        if given is None or np.ndim(given) != 3 or given.shape[2] != layout.act_dim or min(given.shape[:2]) < 1:
            shape = None if given is None else np.shape(given)
            raise ConfigError(f"actions (or noise) must be [K >= 1, N >= 1, {layout.act_dim}], got {shape}")
        if self.kind != "tdm":
            return
        layout.check_horizon(given.shape[1], self.model.cfg.context)

    async def _submit(self, request: Request):
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._batch_loop())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((time.monotonic(), request, future))
        return await future

    # ------------------------------------------------------------------ batching

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch:
                if not self.queue.empty():  # take what is already waiting without yielding
                    batch.append(self.queue.get_nowait())
                    continue
                left = batch[0][0] + self.max_wait - time.monotonic()  # the first request's deadline
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            requests = [r for _, r, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self._decode, requests)
            except Exception as e:  # a failed decode is every waiting caller's error
                for _, _, future in batch:
                    if not future.done():  # a caller that gave up (cancelled) has nothing to receive
                        future.set_exception(e)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _decode(self, requests: list[Request]) -> list:
        start = time.perf_counter()
        if self.kind != "tdm":  # a baseline: the questions of one horizon are one rollout
            from tdm_dist.baselines.model import imagine_many

            questions = [(PlanState(r.env, r.history), r.actions, r.objective) for r in requests]
            results = imagine_many(self.model, questions, self.generator)
            self._count(len(requests), 1, start)
            return results
        groups: dict[tuple, list[int]] = defaultdict(list)
        fns = [None if r.kind == "act" else reward_function(r.env, r.objective) for r in requests]
        for i, r in enumerate(requests):
            groups[r.group(fns[i] is None)].append(i)
        results: list = [None] * len(requests)
        decodes = 0
        for members in groups.values():
            first = requests[members[0]]
            histories = [requests[i].history for i in members]
            if first.kind == "act":
                actions = self.model.act_batch(
                    histories, samples=first.samples, greedy=first.greedy, generator=self.generator
                )
                for j, i in enumerate(members):
                    results[i] = actions[j].cpu().double().numpy()
                decodes += 1
                continue
            given = "actions" if first.actions is not None else "noise"
            stacked = torch.as_tensor(np.stack([getattr(requests[i], given) for i in members]))
            out = self.model.imagine_batch(
                histories,
                stacked if given == "actions" else None,
                noise=stacked if given == "noise" else None,
                reward_fns=None if fns[members[0]] is None else [fns[i] for i in members],
                greedy=first.greedy,
                generator=self.generator,
            )
            obs, rewards, actions = (t.cpu().double().numpy() for t in (out.obs, out.rewards, out.actions))
            for j, i in enumerate(members):
                results[i] = Prediction(rewards=rewards[j], actions=actions[j], obs=obs[j])
            decodes += 1
        self._count(len(requests), decodes, start)
        return results

    def _count(self, requests: int, decodes: int, start: float) -> None:
        self.stats["requests"] += requests
        self.stats["decodes"] += decodes
        self.stats["batches"] += 1
        self.stats["decode_s"] += time.perf_counter() - start


def remote_model_server(num_cpus: float = 1, num_gpus: float | None = None, **options):
    """The Ray actor class of ``ModelServer``: one GPU when the cluster has one, restarted after a crash
    (requests to it are retried on the new instance; imagination is stateless)."""
    import ray

    if num_gpus is None:
        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    options = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 1000, **options}
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, **options)(ModelServer)


class ModelServerPool:
    """Several ModelServers behind one handle. Picklable; ``client(i)`` pins agent ``i`` to one server."""

    def __init__(self, servers: list):
        if not servers:
            raise ConfigError("a ModelServerPool needs at least one server")
        self.servers = list(servers)

    @classmethod
    def start(cls, checkpoint: str, count: int = 1, seed: int | None = None, **server_options) -> ModelServerPool:
        """``count`` servers of ``checkpoint``; with ``seed``, server i samples from seed + i (reproducible where
        the batches are: with several agents, which requests share a batch depends on timing).

        On CPU, several servers split this machine's cores between them unless ``threads`` says otherwise: two
        servers of two threads each on 2 cores decoded 6x slower than one (oversubscribed OpenMP threads spin).
        On a CPU cluster, where servers land on nodes of their own, pass ``threads``.
        """
        actor_options = {k: server_options.pop(k) for k in ("num_cpus", "num_gpus") if k in server_options}
        if count > 1:
            server_options.setdefault("threads", max(1, (os.cpu_count() or 1) // count))
        Server = remote_model_server(**actor_options)
        seeds = [None if seed is None else seed + i for i in range(count)]
        return cls([Server.remote(checkpoint, seed=s, **server_options) for s in seeds])

    def server_for(self, index: int):
        """The server that agent ``index`` uses: agents are spread round-robin."""
        return self.servers[index % len(self.servers)]

    def client(self, index: int, objective: str = "auto", greedy: bool = False) -> ServedModel:
        return ServedModel(self.server_for(index), objective, greedy)

    def describe(self) -> dict:
        import ray

        return ray.get(self.servers[0].describe.remote())


class ServedModel:
    """A :class:`~tdm_dist.planning.models.DynamicsModel` whose TDM or baseline lives in a ModelServer."""

    def __init__(self, server, objective: str = "auto", greedy: bool = False):
        self.server, self.objective, self.greedy = server, objective, greedy

    def imagine(self, state: PlanState, actions: np.ndarray) -> Prediction:
        return self._call(
            "imagine",
            Request("imagine", state.env, state.history, actions=actions, objective=self.objective, greedy=self.greedy),
        )

    def propose(self, state: PlanState, noise: np.ndarray) -> Prediction:
        return self._call(
            "imagine",
            Request("imagine", state.env, state.history, noise=noise, objective=self.objective, greedy=self.greedy),
        )

    def act(self, state: PlanState, samples: int = 1, greedy: bool = True) -> np.ndarray:
        return self._call("act", Request("act", state.env, state.history, samples=samples, greedy=greedy))

    def _call(self, method: str, request: Request):
        return call(getattr(self.server, method), request)


class LocalModelServer:
    """A ModelServer in this process, for one machine without a Ray runtime: its batching loop runs on an event
    loop of its own thread, and ``imagine``/``act`` block the calling thread (one per agent) until the merged
    decode that holds its request is done. ``ServedModel`` and ``MPCAgent`` take it in place of the actor."""

    def __init__(self, checkpoint: str, **server_options):
        import threading

        self.server = ModelServer(checkpoint, **server_options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="model-server", daemon=True)
        self.thread.start()

    def imagine(self, request: Request) -> Prediction:
        return asyncio.run_coroutine_threadsafe(self.server.imagine(request), self.loop).result()

    def act(self, request: Request) -> np.ndarray:
        return asyncio.run_coroutine_threadsafe(self.server.act(request), self.loop).result()

    def describe(self) -> dict:
        return self.server.describe()

    def close(self) -> None:
        """Stop the batching loop and its thread (requests still waiting fail with ``CancelledError``)."""

        async def cancel_all() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        self.server.executor.shutdown()
