"""PETS (Chua et al. 2018), the probabilistic-ensemble baseline of paper §5.1.

An ensemble of E probabilistic MLPs, each predicting a Gaussian over the normalized (o_{t+1} - o_t, r_{t+1})
with a log-variance softly bounded between learned limits (Chua et al., App. A.1), trained with the
Gaussian negative log-likelihood, each member on its own bootstrap of the batch. Rollouts propagate each
candidate with trajectory sampling TS-1: at every step the candidate's next state is sampled from a member
drawn at random for that step. One particle per candidate: the planner's K candidates are the particles.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tdm_dist.baselines.mlp import Baseline, Batch
from tdm_dist.errors import ConfigError


@dataclass
class PETSConfig:
    obs_dim: int  # n, observation entries
    act_dim: int  # m, action entries
    ensemble: int = 5  # E, members (Chua et al. use 5)
    hidden: int = 200  # width of every hidden layer (Chua et al.: 200)
    layers: int = 4  # hidden layers
    max_logvar: float = 0.5  # initial soft upper bound of a member's log-variance (normalized units)
    min_logvar: float = -10.0  # initial soft lower bound
    logvar_bound_weight: float = 0.01  # loss weight that pulls the bounds together (Chua et al.'s code)

    def __post_init__(self):
        if self.ensemble < 1 or self.hidden < 1 or self.layers < 1:
            raise ConfigError(
                f"PETS needs ensemble, hidden and layers >= 1, got {self.ensemble}, {self.hidden}, {self.layers}"
            )
        if not self.min_logvar < self.max_logvar:
            raise ConfigError(f"min_logvar must be below max_logvar, got {self.min_logvar} and {self.max_logvar}")


class PETS(Baseline):
    """E probabilistic MLPs evaluated as one batched network: weights [E, in, out]."""

    kind = "pets"

    def __init__(self, cfg: PETSConfig):
        super().__init__(cfg.obs_dim, cfg.act_dim)
        self.cfg, self.delta = cfg, True
        E, d = cfg.ensemble, cfg.obs_dim + 1
        sizes = [cfg.obs_dim + cfg.act_dim] + [cfg.hidden] * cfg.layers + [2 * d]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(a)  # nn.Linear's initialization, per member
            self.weights.append(nn.Parameter(torch.empty(E, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(E, 1, b).uniform_(-bound, bound)))
        self.max_logvar = nn.Parameter(torch.full((d,), cfg.max_logvar))
        self.min_logvar = nn.Parameter(torch.full((d,), cfg.min_logvar))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized inputs x [E, B, n + m] (member e sees x[e]) -> mean, log-variance [E, B, n + 1]."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = F.silu(x)  # swish, as in Chua et al.
        mean, logvar = x.chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)  # soft bounds (Chua et al., App. A.1)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian NLL summed over members, each on its own bootstrap (resample with replacement) of the batch."""
        x = (self.inputs(batch) - self.in_mean) / self.in_std
        y = (self.targets(batch) - self.out_mean) / self.out_std
        B = x.shape[0]
        idx = _randint(B, (self.cfg.ensemble, B), generator, x.device)  # (E, B)
        mean, logvar = self(x[idx])
        nll = ((mean - y[idx]) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
        return nll + self.cfg.logvar_bound_weight * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TS-1 step: each of the K rows is sampled from its own randomly drawn member.

        obs [K, n], act [K, m] -> (next_obs [K, n], reward [K]).
        """
        K = obs.shape[0]
        x = (torch.cat([obs, act], dim=-1) - self.in_mean) / self.in_std
        mean, logvar = self(x.expand(self.cfg.ensemble, K, -1))  # every member on every row: (E, K, n + 1)
        member = _randint(self.cfg.ensemble, (K,), generator, x.device)
        rows = torch.arange(K, device=x.device)
        mean, std = mean[member, rows], torch.exp(0.5 * logvar[member, rows])
        noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else x.device)
        y = (mean + std * noise.to(x.device)) * self.out_std + self.out_mean
        return obs + y[:, : self.obs_dim], y[:, self.obs_dim]


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Integers in [0, high) drawn on the generator's device (torch requires it), returned on ``device``."""
    where = generator.device if generator is not None else device
    return torch.randint(high, size, generator=generator, device=where).to(device)
