"""The RSSM, DreamerV2's dynamics model (Hafner et al. 2021, "Mastering Atari with Discrete World Models"), the
recurrent baseline of paper §5.1.

A recurrent state-space model over normalized observations, without DreamerV2's image decoder: the state is a
deterministic GRU state h_t and a stochastic state z_t of ``stoch`` categorical variables with ``classes``
classes each. An MLP encoder embeds o_t as e_t;

    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])     prior      p(z_t | h_t)
                                              posterior  q(z_t | h_t, e_t)

and MLP decoders predict o_t and r_t (unit-variance Gaussians) from (h_t, z_t). Training maximizes the ELBO of
segments with DreamerV2's KL balancing (the prior learns from a share ``kl_balance`` of the KL, the posterior
from the rest) and free nats; categorical samples pass straight-through gradients. A segment starts from the
zero state with a zero previous action, as DreamerV2's replay chunks do. Planning filters the posterior over
the real history, then rolls the prior open-loop over each candidate's actions (``rollout``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tdm_dist.baselines.mlp import Baseline, Batch, _std
from tdm_dist.errors import ConfigError, DataError


@dataclass
class RSSMConfig:
    obs_dim: int  # n, observation entries
    act_dim: int  # m, action entries
    deter: int = 200  # size of the deterministic GRU state h
    stoch: int = 16  # categorical variables in the stochastic state z
    classes: int = 16  # classes per categorical variable
    hidden: int = 200  # width of every hidden layer
    layers: int = 2  # hidden layers of the encoder and of each decoder
    segment: int = 50  # L, steps per training segment (DreamerV2: 50); rollouts filter at most L real steps
    kl_scale: float = 1.0  # weight of the KL term (DreamerV2 on DMC: 1.0)
    kl_balance: float = 0.8  # share of the KL that trains the prior; the rest trains the posterior (DreamerV2)
    free_nats: float = 1.0  # each KL term below this many nats (batch and time mean) is not penalized

    def __post_init__(self):
        for name in ("obs_dim", "act_dim", "deter", "stoch", "hidden", "layers", "segment"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RSSMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.classes < 2:
            raise ConfigError(f"RSSMConfig.classes must be >= 2, got {self.classes}")
        if not 0 <= self.kl_balance <= 1:
            raise ConfigError(f"RSSMConfig.kl_balance must be in [0, 1], got {self.kl_balance}")
        for name in ("kl_scale", "free_nats"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ConfigError(f"RSSMConfig.{name} must be >= 0, got {getattr(self, name)}")


class GRUCell(nn.Module):
    """DreamerV2's GRU cell: one linear layer on [x, h] with layer norm, and the update gate biased towards
    keeping the state (bias -1)."""

    def __init__(self, inputs: int, size: int):
        super().__init__()
        self.linear = nn.Linear(inputs + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], dim=-1))).chunk(3, dim=-1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h


class RSSM(Baseline):
    """DreamerV2's world model on vector observations: trains on segments, plans from a filtered state."""

    kind = "rssm"
    uses_history = True  # rollout filters the real history into the recurrent state

    def __init__(self, cfg: RSSMConfig):
        super().__init__(cfg.obs_dim, cfg.act_dim)
        self.cfg, self.delta, self.segment_length = cfg, False, cfg.segment
        n, m, H, Z = cfg.obs_dim, cfg.act_dim, cfg.hidden, cfg.stoch * cfg.classes
        features = cfg.deter + Z  # (h_t, z_t), what the decoders see
        self.encoder = _mlp(n, H, cfg.layers)
        self.img_in = _mlp(Z + m, H, 1)
        self.gru = GRUCell(H, cfg.deter)
        self.prior_net = _mlp(cfg.deter, H, 1, Z)
        self.post_net = _mlp(cfg.deter + H, H, 1, Z)
        self.obs_head = _mlp(features, H, cfg.layers, n)
        self.reward_head = _mlp(features, H, cfg.layers, 1)

    def batch(self, segments: Batch) -> Batch:
        """Segments (obs [B, L+1, n], act [B, L, m], reward [B, L]), checked and returned unchanged."""
        obs, act, reward = segments["obs"], segments["act"], segments["reward"]
        B, L = act.shape[:2] if act.ndim == 3 else (-1, -1)
        want = ((B, L + 1, self.obs_dim), (B, L, self.act_dim), (B, L))
        got = (tuple(obs.shape), tuple(act.shape), tuple(reward.shape))
        if L < 1 or got != want:
            raise DataError(
                f"rssm trains on segments obs [B, L+1, {self.obs_dim}], act [B, L >= 1, {self.act_dim}], "
                f"reward [B, L]; got {got[0]}, {got[1]} and {got[2]}"
            )
        return segments

    @torch.no_grad()
    def fit_normalization(self, batch: Batch) -> None:
        """Input statistics of (o, a) and target statistics of (o, r), over every segment and step."""
        batch = self.batch(batch)
        obs = batch["obs"].reshape(-1, self.obs_dim)
        obs_mean, obs_std = obs.mean(dim=0), _std(obs)
        act = batch["act"].reshape(-1, self.act_dim)
        reward = batch["reward"].reshape(-1, 1)
        self.in_mean.copy_(torch.cat([obs_mean, act.mean(dim=0)]))
        self.in_std.copy_(torch.cat([obs_std, _std(act)]))
        self.out_mean.copy_(torch.cat([obs_mean, reward.mean(dim=0)]))
        self.out_std.copy_(torch.cat([obs_std, _std(reward)]))

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per step: observation and reward NLL plus the balanced KL, on normalized values."""
        batch = self.batch(batch)
        n = self.obs_dim
        # Observations are the encoder's input and the decoder's target, normalized alike (in_* = out_* there).
        obs = (batch["obs"] - self.out_mean[:n]) / self.out_std[:n]  # (B, L+1, n)
        reward = (batch["reward"] - self.out_mean[n]) / self.out_std[n]  # (B, L)
        h, z, post, prior = self._observe(obs, self._actions(batch["act"]), generator)
        features = torch.cat([h, z], dim=-1)  # (B, L+1, deter + Z)
        obs_nll = 0.5 * (self.obs_head(features) - obs).pow(2).sum(dim=-1).mean()
        # State t has seen a_{t-1} and predicts r_t, so states 1..L predict reward[:, 0..L-1].
        reward_nll = 0.5 * (self.reward_head(features[:, 1:]).squeeze(-1) - reward).pow(2).mean()
        cfg = self.cfg
        prior_kl = _kl(post.detach(), prior, cfg.classes).mean().clamp_min(cfg.free_nats)  # trains the prior
        post_kl = _kl(post, prior.detach(), cfg.classes).mean().clamp_min(cfg.free_nats)  # trains the posterior
        kl = cfg.kl_balance * prior_kl + (1 - cfg.kl_balance) * post_kl
        return obs_nll + reward_nll + cfg.kl_scale * kl

    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(
            "the RSSM predicts from a state filtered over the real history, not from one observation: use rollout"
        )

    @torch.no_grad()
    def rollout(
        self,
        obs0: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Filter the posterior over the real history once, then roll the prior open-loop for every candidate.

        obs0: [K, n], the real current observation of each candidate; actions: [K, N, m] in [-1, 1];
        ``history``: (observations [T+1, n] ending in the current observation, actions [T, m]), the real
        interaction so far. Only its last ``cfg.segment`` steps are filtered (training segments are no
        longer, and it bounds the cost); without a history, or with T = 0, each candidate filters its obs0.
        Returns (obs [K, N, n], rewards [K, N]): the decoded means of o_{t+1} ... o_{t+N} and r_{t+1} ...
        r_{t+N}, with z sampled from the prior at every step.
        """
        K, N, n, m = obs0.shape[0], actions.shape[1] if actions.ndim == 3 else 0, self.obs_dim, self.act_dim
        if obs0.shape != (K, n) or actions.shape != (K, N, m) or N < 1:
            raise DataError(
                f"rollout needs obs0 [K, {n}] and actions [K, N >= 1, {m}], got {tuple(obs0.shape)} and "
                f"{tuple(actions.shape)}"
            )
        if history is None:
            past_obs, past_act = obs0[:, None], obs0.new_zeros(K, 0, m)
        else:
            past_obs, past_act = self._history(obs0, *history)
        h, z, _, _ = self._observe(
            (past_obs - self.out_mean[:n]) / self.out_std[:n], self._actions(past_act), generator
        )
        h, z = h[:, -1].expand(K, -1), z[:, -1].expand(K, -1)  # the filtered state, once per candidate
        features = []
        for a in self._actions(actions).unbind(dim=1):
            h = self.gru(self.img_in(torch.cat([z, a], dim=-1)), h)
            z = self._sample(self.prior_net(h), generator)
            features.append(torch.cat([h, z], dim=-1))
        features = torch.stack(features, dim=1)  # (K, N, deter + Z)
        obs = self.obs_head(features) * self.out_std[:n] + self.out_mean[:n]
        rewards = self.reward_head(features).squeeze(-1) * self.out_std[n] + self.out_mean[n]
        return obs, rewards

    def _observe(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Filter from the zero state: normalized obs [B, T+1, n], act [B, T, m] -> h [B, T+1, deter], posterior
        samples z, posterior and prior logits [B, T+1, Z]. Step 0 sees a zero action, as in DreamerV2."""
        B, cfg = obs.shape[0], self.cfg
        embed = self.encoder(obs)  # (B, T+1, H)
        h = obs.new_zeros(B, cfg.deter)
        z = obs.new_zeros(B, cfg.stoch * cfg.classes)
        prev_act = torch.cat([act.new_zeros(B, 1, self.act_dim), act], dim=1)  # a_{t-1}: (B, T+1, m)
        hs, zs, posts, priors = [], [], [], []
        for t in range(obs.shape[1]):
            h = self.gru(self.img_in(torch.cat([z, prev_act[:, t]], dim=-1)), h)
            post = self.post_net(torch.cat([h, embed[:, t]], dim=-1))
            z = self._sample(post, generator)
            hs.append(h), zs.append(z), posts.append(post), priors.append(self.prior_net(h))
        return tuple(torch.stack(x, dim=1) for x in (hs, zs, posts, priors))

    def _sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """logits [..., stoch * classes] -> one-hot samples with straight-through gradients (DreamerV2 §2)."""
        logits = logits.unflatten(-1, (self.cfg.stoch, self.cfg.classes))
        # Gumbel-max: an exact categorical sample from uniforms drawn on the generator's device.
        where = generator.device if generator is not None else logits.device
        u = torch.rand(logits.shape, generator=generator, device=where).to(logits.device)
        index = (logits - torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))).argmax(dim=-1)
        probs = logits.softmax(dim=-1)
        return (F.one_hot(index, self.cfg.classes).to(probs.dtype) + probs - probs.detach()).flatten(-2)

    def _actions(self, act: torch.Tensor) -> torch.Tensor:
        return (act - self.in_mean[self.obs_dim :]) / self.in_std[self.obs_dim :]

    def _history(self, obs0: torch.Tensor, observations, actions) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``cfg.segment`` steps of a checked history, as a batch of one: [1, S+1, n], [1, S, m]."""
        observations = torch.as_tensor(observations, dtype=torch.float32, device=obs0.device)
        actions = torch.as_tensor(actions, dtype=torch.float32, device=obs0.device)
        T = observations.shape[0] - 1
        if observations.shape != (T + 1, self.obs_dim) or T < 0 or actions.shape != (T, self.act_dim):
            raise DataError(
                f"a history needs observations [T+1, {self.obs_dim}] and actions [T, {self.act_dim}], got "
                f"{tuple(observations.shape)} and {tuple(actions.shape)}"
            )
        if not torch.allclose(observations[-1].expand_as(obs0), obs0, rtol=1e-5, atol=1e-6):
            raise DataError("a history must end in the current observation, obs0, of every candidate")
        S = min(T, self.cfg.segment)
        return observations[None, T - S :], actions[None, T - S :]


def _mlp(inputs: int, hidden: int, layers: int, outputs: int | None = None) -> nn.Sequential:
    """``layers`` dense layers with ELU (DreamerV2's activation), then a linear output layer if ``outputs``."""
    modules = []
    for a, b in itertools.pairwise([inputs] + [hidden] * layers):
        modules += [nn.Linear(a, b), nn.ELU()]
    if outputs is not None:
        modules.append(nn.Linear(hidden, outputs))
    return nn.Sequential(*modules)


def _kl(lhs: torch.Tensor, rhs: torch.Tensor, classes: int) -> torch.Tensor:
    """KL(lhs || rhs) of categorical states given as logits [..., stoch * classes], summed over variables -> [...]."""
    log_p = lhs.unflatten(-1, (-1, classes)).log_softmax(dim=-1)
    log_q = rhs.unflatten(-1, (-1, classes)).log_softmax(dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=(-2, -1))
