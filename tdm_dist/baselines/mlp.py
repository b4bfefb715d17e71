"""The MLP baselines (paper §5.1, App. F): one-step dynamics models ``(o_t, a_t) -> (o_{t+1}, r_{t+1})``.

Four switches make the paper's variants: ``delta`` predicts ``o_{t+1} - o_t`` instead of ``o_{t+1}``;
``tokin`` feeds the MLP the tokenized observation and action (the TDM's tokenizer), each token embedded
with a learned embedding plus a learned per-entry embedding, concatenated; ``tokout`` predicts a
categorical distribution over the tokenizer's bins for every observation entry and the reward, trained
with cross-entropy, and predicts the value of the most likely bin. Regression inputs and targets are
normalized with statistics of the training data (``fit_normalization``), kept as buffers so that they
travel with the checkpoint. :class:`Baseline` is what every baseline shares: the batch layout, the
normalization, and the open-loop ``rollout``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from tdm_dist.errors import ConfigError, DataError
from tdm_dist.tokenizer import NUM_BINS, decode_values, encode_actions, encode_values

Batch = dict[str, torch.Tensor]  # obs [B, n], act [B, m], next_obs [B, n], reward [B]

# name -> (switches, target parameter count); the paper's baselines have ca. 400k parameters, its
# large one ca. 70M (§5.1). "mlp-tokin-delta" is the paper's best baseline.
PRESETS: dict[str, tuple[dict, int]] = {
    "mlp": ({}, 400_000),
    "mlp-delta": ({"delta": True}, 400_000),
    "mlp-tokin": ({"tokin": True}, 400_000),
    "mlp-tokout": ({"tokout": True}, 400_000),
    "mlp-tokin-delta": ({"tokin": True, "delta": True}, 400_000),
    "mlp-tokin-delta-70m": ({"tokin": True, "delta": True}, 70_000_000),
}


class Baseline(nn.Module):
    """What every baseline shares: normalization buffers, the training batch, and the open-loop rollout.

    The learner feeds every baseline *segments* of ``segment_length`` steps cut from the episodes:
    ``obs`` [B, L+1, n], ``act`` [B, L, m], ``reward`` [B, L] (r_{t+1} follows a_t); ``batch(segments)``
    turns them into what ``loss`` takes. The one-step models (L = 1) take transitions, ``Batch``.

    Subclasses implement ``loss(batch, generator)`` and ``step(obs [K, n], act [K, m], generator) ->
    (next_obs [K, n], reward [K])``, and set ``self.delta`` (whether the targets are ``o_{t+1} - o_t``);
    a model with a recurrent state (RSSM) overrides ``rollout`` and uses the real history instead.
    """

    kind: str  # the registry name (``build`` sets it); checkpoints store it to rebuild the model
    delta: bool  # the targets are o_{t+1} - o_t
    segment_length: int = 1  # steps per training segment
    uses_history: bool = False  # rollout needs the real history (a recurrent state), not only the last observation

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ConfigError(f"a baseline needs obs_dim >= 1 and act_dim >= 1, got {obs_dim} and {act_dim}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        # Identity until fit_normalization; inputs are (o_t, a_t), targets (o_{t+1} or its delta, r_{t+1}).
        self.register_buffer("in_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("in_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("out_mean", torch.zeros(obs_dim + 1))
        self.register_buffer("out_std", torch.ones(obs_dim + 1))

    @property
    def device(self) -> torch.device:
        return self.in_mean.device

    def inputs(self, batch: Batch) -> torch.Tensor:
        """(o_t, a_t) -> [B, n + m]."""
        self._check(batch)
        return torch.cat([batch["obs"], batch["act"]], dim=-1)

    def targets(self, batch: Batch) -> torch.Tensor:
        """(o_{t+1} or o_{t+1} - o_t, r_{t+1}) -> [B, n + 1]."""
        self._check(batch)
        next_obs = batch["next_obs"] - batch["obs"] if self.delta else batch["next_obs"]
        return torch.cat([next_obs, batch["reward"][:, None]], dim=-1)

    @torch.no_grad()
    def fit_normalization(self, batch: Batch) -> None:
        """Set the input and target statistics from the training data (constant entries keep std 1)."""
        x, y = self.inputs(batch), self.targets(batch)
        self.in_mean.copy_(x.mean(dim=0))
        self.in_std.copy_(_std(x))
        self.out_mean.copy_(y.mean(dim=0))
        self.out_std.copy_(_std(y))

    def batch(self, segments: Batch) -> Batch:
        """Segments of one step (obs [B, 2, n], act [B, 1, m], reward [B, 1]) -> transitions (``Batch``)."""
        obs, act, reward = segments["obs"], segments["act"], segments["reward"]
        if obs.ndim != 3 or obs.shape[1] != 2 or act.shape[1] != 1 or reward.shape[1:] != (1,):
            raise DataError(
                f"{self.kind} trains on one-step segments (obs [B, 2, n], act [B, 1, m], reward [B, 1]), got "
                f"{tuple(obs.shape)}, {tuple(act.shape)} and {tuple(reward.shape)}"
            )
        return {"obs": obs[:, 0], "act": act[:, 0], "next_obs": obs[:, 1], "reward": reward[:, 0]}

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def rollout(
        self,
        obs0: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Open-loop prediction of K action sequences, each feeding back its own predictions.

        obs0: [K, n], the real current observation of each candidate; actions: [K, N, m] in [-1, 1].
        ``history`` (observations [T+1, n] ending in obs0, actions [T, m]) is the real interaction so far;
        one-step models need only obs0 and ignore it.
        Returns (obs [K, N, n], rewards [K, N]): o_{t+1} ... o_{t+N} and r_{t+1} ... r_{t+N}.
        """
        K, n, m = obs0.shape[0], self.obs_dim, self.act_dim
        if (
            obs0.shape != (K, n)
            or actions.ndim != 3
            or actions.shape[0] != K
            or actions.shape[2] != m
            or not all(actions.shape)
        ):
            raise DataError(
                f"rollout needs obs0 [K, {n}] and actions [K, N >= 1, {m}], got {tuple(obs0.shape)} and "
                f"{tuple(actions.shape)}"
            )
        obs, all_obs, all_rewards = obs0, [], []
        for t in range(actions.shape[1]):
            obs, reward = self.step(obs, actions[:, t], generator)
            all_obs.append(obs), all_rewards.append(reward)
        return torch.stack(all_obs, dim=1), torch.stack(all_rewards, dim=1)

    def _check(self, batch: Batch) -> None:
        B, n, m = batch["obs"].shape[0], self.obs_dim, self.act_dim
        want = {"obs": (B, n), "act": (B, m), "next_obs": (B, n), "reward": (B,)}
        got = {k: tuple(batch[k].shape) for k in want if k in batch}
        if any(got[k] != want[k] for k in got):
            raise DataError(f"a batch for this model needs shapes {want}, got {got}")


@dataclass
class MLPConfig:
    obs_dim: int  # n, observation entries
    act_dim: int  # m, action entries
    hidden: int = 256  # width of every hidden layer
    layers: int = 4  # hidden layers
    tokin: bool = False  # inputs are embedded tokens instead of normalized values (App. F)
    tokout: bool = False  # outputs are categorical over the tokenizer's bins, trained with cross-entropy
    delta: bool = False  # predict o_{t+1} - o_t instead of o_{t+1}
    embed_dim: int = 32  # size of a token's embedding (tokin), and of an entry's features before its logits (tokout)

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1 or self.embed_dim < 1:
            raise ConfigError(
                f"an MLP needs hidden, layers and embed_dim >= 1, got {self.hidden}, {self.layers}, {self.embed_dim}"
            )


class MLPDynamics(Baseline):
    """An MLP that predicts (o_{t+1} or its delta, r_{t+1}) from (o_t, a_t)."""

    kind = "mlp"  # any MLP variant rebuilds from its config; build() names the preset

    def __init__(self, cfg: MLPConfig):
        super().__init__(cfg.obs_dim, cfg.act_dim)
        self.cfg, self.delta = cfg, cfg.delta
        n, m, H, E = cfg.obs_dim, cfg.act_dim, cfg.hidden, cfg.embed_dim
        if cfg.tokin:
            # One table for every bin token, as in the TDM; the per-entry embedding says which entry it is.
            self.token_embedding = nn.Embedding(NUM_BINS, E)
            self.entry_embedding = nn.Parameter(0.02 * torch.randn(n + m, E))
        sizes = [(n + m) * E if cfg.tokin else n + m] + [H] * cfg.layers
        body = []
        for a, b in itertools.pairwise(sizes):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*body)
        if cfg.tokout:
            # Per entry E features, then logits through one shared [E, bins] layer: a head of H * (n + 1)
            # * 1024 weights would dwarf the MLP it sits on.
            self.head = nn.Linear(H, (n + 1) * E)
            self.logits = nn.Linear(E, NUM_BINS)
        else:
            self.head = nn.Linear(H, n + 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """obs [B, n], act [B, m] -> logits [B, n + 1, bins] (tokout) or normalized targets [B, n + 1]."""
        if self.cfg.tokin:
            tokens = torch.cat([encode_values(obs, "observations"), encode_actions(act)], dim=-1)  # (B, n + m)
            x = (self.token_embedding(tokens) + self.entry_embedding).flatten(1)  # (B, (n + m) E)
        else:
            x = (torch.cat([obs, act], dim=-1) - self.in_mean) / self.in_std
        y = self.head(self.body(x))
        if self.cfg.tokout:
            return self.logits(y.view(-1, self.obs_dim + 1, self.cfg.embed_dim))
        return y

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the normalized targets, or cross-entropy of their tokens (tokout)."""
        target = self.targets(batch)
        out = self(batch["obs"], batch["act"])
        if self.cfg.tokout:
            return F.cross_entropy(out.flatten(0, 1), encode_values(target, "targets").flatten())
        return F.mse_loss(out, (target - self.out_mean) / self.out_std)

    @torch.no_grad()
    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic step: obs [K, n], act [K, m] -> (next_obs [K, n], reward [K]). No randomness."""
        out = self(obs, act)
        y = decode_values(out.argmax(dim=-1), obs) if self.cfg.tokout else out * self.out_std + self.out_mean
        next_obs = obs + y[:, : self.obs_dim] if self.delta else y[:, : self.obs_dim]
        return next_obs, y[:, self.obs_dim]


def _std(x: torch.Tensor) -> torch.Tensor:
    """Per-entry std of x [B, d]; 1 where an entry is (nearly) constant, so normalizing never divides by 0."""
    std = x.std(dim=0) if x.shape[0] > 1 else torch.ones_like(x[0])
    return torch.where(std > 1e-6, std, torch.ones_like(std))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preset(name: str, obs_dim: int, act_dim: int) -> MLPConfig:
    """The config of the named MLP baseline, its hidden width chosen so that it has the paper's parameter count
    (ca. 400k, or 70M for ``mlp-tokin-delta-70m``) for these dimensions."""
    if name not in PRESETS:
        raise ConfigError(f"unknown MLP baseline {name!r}; known: {', '.join(PRESETS)}")
    switches, target = PRESETS[name]
    cfg = MLPConfig(obs_dim, act_dim, **switches)

    def count(hidden: int) -> int:
        with torch.device("meta"):  # shapes only: no memory, no time
            return num_params(MLPDynamics(replace(cfg, hidden=hidden)))

    lo, hi = 1, 1 << 16  # the widest width with no more than `target` parameters, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid - 1)
    return replace(cfg, hidden=lo)
