"""ModelServer throughput: dynamic batching across agents, and what the actor costs against in-process decoding.

Measured in one run, on cartpole-swingup dimensions (n=5, m=1), preset tiny (random weights: speed does not
depend on them), K=32 candidates, horizon N=10, a real ~25-step history per agent, rewards from the
predicted observations:

(a) 8 agents (Ray actors) each send ``rounds`` imagine requests to one ModelServer at the same time, against
    the same 8 x ``rounds`` requests sent one by one (each waits for its answer): aggregate imagined tokens/s.
(b) the server's rate in (a) against ``TDM.imagine_batch`` called in this process on the same 8 requests at
    once (the same total batch, 8 x K rows): what the actor, the queue and the transport cost.

    python experiments/benchmarks/serve.py            # ~3 minutes on 2 cores
    python experiments/benchmarks/serve.py --smoke    # seconds; checks the script runs

Last two lines: ``batching_speedup=<x>`` then ``server_efficiency=<x>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode import ENV, history_of

from tdm_dist import envs
from tdm_dist.learner.checkpoint import save_checkpoint
from tdm_dist.model import TDM, preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--candidates", "-K", type=int, default=32)
    parser.add_argument("--horizon", "-N", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="requests per agent")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: K=4, N=2, 2 rounds")
    args = parser.parse_args()
    if args.smoke:
        args.candidates, args.horizon, args.rounds = 4, 2, 2

    import ray

    from tdm_dist.runtime.model_server import Request, remote_model_server

    torch.manual_seed(0)
    spec = envs.spec(ENV)
    histories = [history_of(200, spec, seed=i) for i in range(args.agents)]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (args.agents, args.candidates, args.horizon, spec.act_dim))
    requests = [Request("imagine", ENV, histories[i], actions=actions[i]) for i in range(args.agents)]
    tokens_per_request = args.candidates * args.horizon * spec.obs_dim
    threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        model = TDM(preset("tiny")).eval()
        save_checkpoint(tmp, model, env_specs={ENV: spec.to_dict()})
        ray.init(num_cpus=max(os.cpu_count() or 1, args.agents + 1), include_dashboard=False, log_to_driver=False)
        server = remote_model_server(num_cpus=1).remote(
            tmp, max_batch=args.agents, max_wait_ms=args.max_wait_ms, threads=threads
        )
        ray.get(server.imagine.remote(requests[0]))  # warm-up: the model is loaded and has decoded once
        print(
            f"{ENV} (n={spec.obs_dim}, m={spec.act_dim}), tiny, K={args.candidates}, N={args.horizon}, "
            f"{args.agents} agents x {args.rounds} requests, torch threads {threads}, max wait {args.max_wait_ms} ms"
        )

        @ray.remote(num_cpus=0)
        class Agent:
            def run(self, server, request, rounds):
                for _ in range(rounds):
                    ray.get(server.imagine.remote(request))

        agents = [Agent.remote() for _ in requests]
        ray.get([a.run.remote(server, r, 1) for a, r in zip(agents, requests, strict=True)])  # warm-up
        before = ray.get(server.describe.remote())["stats"]
        tic = time.perf_counter()
        ray.get([a.run.remote(server, r, args.rounds) for a, r in zip(agents, requests, strict=True)])
        concurrent = len(requests) * args.rounds * tokens_per_request / (time.perf_counter() - tic)
        stats = ray.get(server.describe.remote())["stats"]
        print(
            f"concurrent agents : {concurrent:9.0f} imagined tokens/s "
            f"({stats['requests'] - before['requests']} requests in {stats['batches'] - before['batches']} batches)"
        )

        tic = time.perf_counter()
        for _ in range(args.rounds):
            for r in requests:
                ray.get(server.imagine.remote(r))
        one_by_one = len(requests) * args.rounds * tokens_per_request / (time.perf_counter() - tic)
        print(f"one by one        : {one_by_one:9.0f} imagined tokens/s")
        ray.shutdown()  # the server's cores are free again for the in-process measurement

        reward_fns = [envs.reward_fn(ENV)] * args.agents
        stacked = torch.as_tensor(actions, dtype=torch.float32)
        model.imagine_batch(histories, stacked, reward_fns=reward_fns)  # warm-up
        times = []
        for _ in range(args.rounds):
            tic = time.perf_counter()
            model.imagine_batch(histories, stacked, reward_fns=reward_fns)
            times.append(time.perf_counter() - tic)
        in_process = len(requests) * tokens_per_request / statistics.median(times)
        print(f"in process, batch : {in_process:9.0f} imagined tokens/s ({args.agents} x K rows in one imagine_batch)")

    print(f"batching_speedup={concurrent / one_by_one:.2f}")
    print(f"server_efficiency={concurrent / in_process:.2f}")


if __name__ == "__main__":
    main()
