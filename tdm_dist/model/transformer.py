"""The transformer dynamics model (TDM): a decoder-only Gato-style transformer over trajectory tokens.

One set of weights, three views (paper §4): conditioned on (h, o_t) it predicts r_t (reward model), on
(h, o_t, r_t) it predicts a_t (BC policy, :meth:`TDM.act`), on (h, o_t, r_t, a_t) it predicts o_{t+1}
(dynamics model, :meth:`TDM.imagine`, the hot path of MPC).

Shapes: B batch, T tokens, C = d_model, H heads, D = C / H, K candidate action sequences, N horizon,
n observation entries, m action entries, P tokens of shared history (prefix), S tokens per candidate
(suffix).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tdm_dist.errors import ConfigError
from tdm_dist.tokenizer import (
    NUM_BINS,
    PAD,
    SEPARATOR,
    VOCAB_SIZE,
    History,
    Kind,
    decode_actions,
    decode_values,
    encode_actions,
    encode_values,
)


@dataclass
class TDMConfig:
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    d_model: int = 128  # width of the residual stream
    d_ff: int = 512  # hidden width of each block's MLP
    context: int = 1023  # tokens in the attention window (paper: 1023)
    max_step_tokens: int = 256  # most tokens one timestep may have (n + m + 2)
    dropout: float = 0.0  # dropout on attention weights and residual branches while training
    vocab_size: int = VOCAB_SIZE  # 1024 bins + separator + padding

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


# Widths follow Gato (Reed et al. 2022); layer counts are set so the parameter counts come within 4% of the
# paper's models: base 79.7M for its 77M specialist (§5.1), large 371.9M for its 362M generalist (§5.2.2).
PRESETS: dict[str, TDMConfig] = {
    "tiny": TDMConfig(n_layer=4, n_head=4, d_model=128, d_ff=512),
    "small": TDMConfig(n_layer=6, n_head=6, d_model=384, d_ff=1536),
    "base": TDMConfig(n_layer=11, n_head=12, d_model=768, d_ff=3072),
    "large": TDMConfig(n_layer=13, n_head=16, d_model=1536, d_ff=6144),
}


def preset(name: str, **overrides) -> TDMConfig:
    """The config of a named preset, with fields overridden by name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    return TDMConfig(**{**asdict(PRESETS[name]), **overrides})


class LayerCache:
    """Keys and values of one attention layer during decoding.

    The history (prefix) is encoded once with batch 1 and shared by all K candidates without copying;
    each candidate appends its own tokens to a preallocated suffix buffer.
    """

    def __init__(self, candidates: int, n_head: int, head_dim: int, max_suffix: int, device, dtype):
        self.prefix_k: torch.Tensor | None = None  # [1, H, P, D]
        self.prefix_v: torch.Tensor | None = None
        self.k = torch.empty(candidates, n_head, max_suffix, head_dim, device=device, dtype=dtype)  # [K,H,S,D]
        self.v = torch.empty_like(self.k)
        self.filled = 0  # suffix tokens written so far

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.prefix_k is None:  # encoding the shared history: plain causal attention, batch 1
            self.prefix_k, self.prefix_v = k, v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        K, H, c, D = q.shape
        P = self.prefix_k.shape[2]
        s0, s1 = self.filled, self.filled + c
        self.k[:, :, s0:s1], self.v[:, :, s0:s1] = k, v
        self.filled = s1
        scale = 1.0 / math.sqrt(D)
        # The prefix is common to all candidates: fold K into the query axis so it is read once,
        # as one matrix product per head instead of K.
        q_flat = q.transpose(0, 1).reshape(H, K * c, D)
        scores_prefix = (q_flat @ self.prefix_k[0].transpose(1, 2)).view(H, K, c, P).transpose(0, 1)
        scores_suffix = q @ self.k[:, :, :s1].transpose(2, 3)  # [K, H, c, s1]
        if c > 1:  # causal within the chunk just written
            future = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
            scores_suffix[..., s0:s1] = scores_suffix[..., s0:s1].masked_fill(future, float("-inf"))
        weights = (torch.cat([scores_prefix, scores_suffix], dim=-1) * scale).softmax(dim=-1)
        w_prefix = weights[..., :P].transpose(0, 1).reshape(H, K * c, P)
        out_prefix = (w_prefix @ self.prefix_v[0]).view(H, K, c, D).transpose(0, 1)
        return out_prefix + weights[..., P:] @ self.v[:, :, :s1]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TDMConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3×[B,H,T,D]
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            y = cache.attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: TDMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model), nn.Dropout(cfg.dropout)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cache))
        return x + self.mlp(self.ln2(x))


def _layout_tensors(obs_dim, act_dim, device):
    """n and m as [B, 1] (or scalar) long tensors so per-row layouts broadcast over positions."""
    n = torch.as_tensor(obs_dim, device=device).reshape(-1, 1)
    m = torch.as_tensor(act_dim, device=device).reshape(-1, 1)
    return n, m


def token_kinds(positions: torch.Tensor, obs_dim, act_dim) -> tuple[torch.Tensor, torch.Tensor]:
    """(position within timestep, kind) of tokens at window positions ``positions`` [T] (window starts at
    a timestep boundary). ``obs_dim``/``act_dim`` are ints or [B] tensors (one layout per row)."""
    n, m = _layout_tensors(obs_dim, act_dim, positions.device)
    step_pos = positions.view(1, -1) % (n + m + 2)  # [B or 1, T]
    kind = torch.full_like(step_pos, int(Kind.ACTION))
    kind = torch.where(step_pos == n + 1, int(Kind.SEP), kind)
    kind = torch.where(step_pos == n, int(Kind.REWARD), kind)
    kind = torch.where(step_pos < n, int(Kind.OBS), kind)
    return step_pos, kind


def token_nll(logits: torch.Tensor, tokens: torch.Tensor, obs_dim, act_dim, reduction: str = "mean"):
    """NLL of ``tokens[:, 1:]`` under next-token ``logits`` [B, T-1, V] of ``tokens[:, :-1]`` (paper eq. 2).

    Observation, reward and action tokens count; separators are constant and padding (``PAD``) is not data.
    ``reduction="sum"`` returns (summed NLL, counted tokens) for averaging across batches and workers.
    A free function so that a DDP-wrapped model's forward computes the logits.
    """
    targets = tokens[:, 1:]
    _, kind = token_kinds(torch.arange(1, tokens.shape[1], device=tokens.device), obs_dim, act_dim)
    keep = (kind != int(Kind.SEP)) & (targets != PAD)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T-1]
    total, count = (nll * keep).sum(), keep.sum()
    if reduction == "sum":
        return total, count
    return total / count.clamp(min=1)


class TDM(nn.Module):
    """Decoder-only transformer over tokenized trajectories."""

    def __init__(self, cfg: TDMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.step_pos_emb = nn.Embedding(cfg.max_step_tokens, cfg.d_model)  # position within the timestep
        self.kind_emb = nn.Embedding(len(Kind), cfg.d_model)  # obs / reward / sep / action
        self.window_pos_emb = nn.Embedding(cfg.context, cfg.d_model)  # position in the window
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_layout(self, obs_dim, act_dim) -> None:
        """Raise ``ConfigError`` if a timestep of this layout does not fit the model's step embedding."""
        n, m = _layout_tensors(obs_dim, act_dim, "cpu")
        longest = int((n + m).max()) + 2
        if longest > self.cfg.max_step_tokens:
            raise ConfigError(
                f"a timestep of {longest} tokens (obs + reward + separator + action) exceeds the model's "
                f"max_step_tokens ({self.cfg.max_step_tokens})"
            )

    # ------------------------------------------------------------------ training view

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor, obs_dim, act_dim) -> torch.Tensor:
        step_pos, kind = token_kinds(positions, obs_dim, act_dim)
        x = self.tok_emb(tokens) + self.step_pos_emb(step_pos) + self.kind_emb(kind) + self.window_pos_emb(positions)
        return self.drop(x)

    def forward(self, tokens: torch.Tensor, obs_dim, act_dim) -> torch.Tensor:
        """tokens: [B, T] windows starting at a timestep boundary -> logits [B, T, V] for the next token."""
        _B, T = tokens.shape
        if self.cfg.context < T:
            raise ConfigError(f"a window of {T} tokens exceeds the model's context of {self.cfg.context}")
        self.check_layout(obs_dim, act_dim)
        x = self._embed(tokens, torch.arange(T, device=tokens.device), obs_dim, act_dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, tokens: torch.Tensor, obs_dim, act_dim) -> torch.Tensor:
        """Mean NLL of the observation, reward and action tokens of ``tokens`` [B, T] (paper eq. 2)."""
        return token_nll(self(tokens[:, :-1], obs_dim, act_dim), tokens, obs_dim, act_dim)

    # ------------------------------------------------------------------ decoding views

    def _pick(self, logits: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> torch.Tensor:
        """One token id per row from next-token logits [K, V], among the value bins only."""
        logits = logits[:, :NUM_BINS]
        if greedy:
            return logits.argmax(dim=-1)
        # Inverse-CDF sampling: one uniform draw per row (torch.multinomial draws one per bin).
        cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator) * cdf[:, -1:]
        return torch.searchsorted(cdf, u).squeeze(1).clamp(max=NUM_BINS - 1)

    @torch.no_grad()
    def imagine(
        self,
        history: History,
        actions: torch.Tensor,
        *,
        reward_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        naive: bool = False,
        return_logits: bool = False,
    ):
        """Predict what K candidate action sequences lead to, from one shared history (paper §4.1).

        history: the real interaction, ending with o_t, r_t. actions: [K, N, m] in [-1, 1].
        reward_fn(next_obs [K, n], action [K, m]) -> [K]: when given, rewards are computed from the
        predicted observations (eq. 5) and fed back without a decode step; otherwise they are decoded
        (eq. 6). Returns obs [K, N, n] and rewards [K, N] (and, with ``return_logits``, the logits of every
        decoded token, [K, N, n or n + 1, V]). ``naive`` re-encodes the whole sequence for every token: the
        reference for tests and benchmarks, never for use.
        """
        layout = history.layout
        n, m = layout.obs_dim, layout.act_dim
        self.check_layout(n, m)
        actions = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if actions.ndim != 3 or actions.shape[2] != m or actions.shape[1] < 1:
            raise ConfigError(f"actions must be [K, N >= 1, {m}] for this history, got {tuple(actions.shape)}")
        K, N, _ = actions.shape
        imagined_tokens = N * layout.tokens_per_step
        if imagined_tokens + n + 1 > self.cfg.context:
            longest = (self.cfg.context - n - 1) // layout.tokens_per_step
            raise ConfigError(
                f"a horizon of {N} steps ({layout.tokens_per_step} tokens each) and the current observation do not "
                f"fit the model's context of {self.cfg.context} tokens; the longest horizon is {longest}"
            )
        prefix = history.tokens(self.cfg.context - imagined_tokens)
        prefix = torch.as_tensor(prefix, device=self.device).long()
        decoder = (_NaiveDecoder if naive else _CachedDecoder)(self, prefix, K, imagined_tokens, n, m)

        action_tokens = encode_actions(actions)  # [K, N, m]
        sep = torch.full((K, 1), SEPARATOR, dtype=torch.long, device=self.device)
        obs_tokens = torch.empty(K, N, n, dtype=torch.long, device=self.device)
        reward_tokens = torch.empty(K, N, dtype=torch.long, device=self.device)
        rewards = torch.empty(K, N, device=self.device)
        logits_out = []
        chunk = torch.cat([sep, action_tokens[:, 0]], dim=1)  # SEP, a_t
        for step in range(N):
            for i in range(n):  # o_{t+1}, one token at a time
                logits = decoder.feed(chunk)
                if return_logits:
                    logits_out.append(logits)
                obs_tokens[:, step, i] = self._pick(logits, greedy, generator)
                chunk = obs_tokens[:, step, i : i + 1]
            if reward_fn is None:  # r_{t+1} decoded by the model
                logits = decoder.feed(chunk)
                if return_logits:
                    logits_out.append(logits)
                reward_tokens[:, step] = self._pick(logits, greedy, generator)
                rewards[:, step] = decode_values(reward_tokens[:, step], rewards)
                known = reward_tokens[:, step : step + 1]
            else:  # r_{t+1} computed from o_{t+1}: it joins the next chunk, no decode step of its own
                next_obs = decode_values(obs_tokens[:, step], rewards)
                rewards[:, step] = reward_fn(next_obs, actions[:, step])
                reward_tokens[:, step] = encode_values(rewards[:, step], "rewards from reward_fn")
                known = torch.cat([chunk, reward_tokens[:, step : step + 1]], dim=1)
            if step + 1 < N:
                chunk = torch.cat([known, sep, action_tokens[:, step + 1]], dim=1)
        obs = decode_values(obs_tokens, rewards)
        if return_logits:
            return obs, rewards, torch.stack(logits_out, dim=1).view(K, N, -1, self.cfg.vocab_size)
        return obs, rewards

    @torch.no_grad()
    def act(
        self,
        history: History,
        *,
        samples: int = 1,
        greedy: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The BC-policy view: decode a_t given the history ending in o_t, r_t. Returns [samples, m]."""
        layout = history.layout
        self.check_layout(layout.obs_dim, layout.act_dim)
        prefix = history.tokens(self.cfg.context - layout.act_dim - 1)
        prefix = torch.as_tensor(prefix, device=self.device).long()
        decoder = _CachedDecoder(self, prefix, samples, layout.act_dim + 1, layout.obs_dim, layout.act_dim)
        tokens = torch.empty(samples, layout.act_dim, dtype=torch.long, device=self.device)
        chunk = torch.full((samples, 1), SEPARATOR, dtype=torch.long, device=self.device)
        for i in range(layout.act_dim):
            tokens[:, i] = self._pick(decoder.feed(chunk), greedy, generator)
            chunk = tokens[:, i : i + 1]
        return decode_actions(tokens, self.tok_emb.weight).float()


class _CachedDecoder:
    """Feeds tokens through the model with a KV cache: the prefix once, then K candidate suffixes."""

    def __init__(self, model: TDM, prefix: torch.Tensor, candidates: int, max_new: int, obs_dim: int, act_dim: int):
        cfg = model.cfg
        self.model, self.obs_dim, self.act_dim = model, obs_dim, act_dim
        w = model.tok_emb.weight
        self.caches = [
            LayerCache(candidates, cfg.n_head, cfg.d_model // cfg.n_head, max_new, w.device, w.dtype)
            for _ in range(cfg.n_layer)
        ]
        self.position = 0
        self._run(prefix.unsqueeze(0))  # encode the shared history once, batch 1

    def _run(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        positions = torch.arange(self.position, self.position + tokens.shape[1], device=tokens.device)
        self.position += tokens.shape[1]
        x = model._embed(tokens, positions, self.obs_dim, self.act_dim)
        for block, cache in zip(model.blocks, self.caches, strict=False):
            x = block(x, cache)
        return model.head(model.ln_f(x[:, -1]))

    def feed(self, chunk: torch.Tensor) -> torch.Tensor:
        """chunk: [K, c] tokens -> logits [K, V] of the token after the chunk."""
        return self._run(chunk)


class _NaiveDecoder:
    """Reference decoder: keeps the whole sequence and re-encodes it for every new token."""

    def __init__(self, model: TDM, prefix: torch.Tensor, candidates: int, max_new: int, obs_dim: int, act_dim: int):
        self.model, self.obs_dim, self.act_dim = model, obs_dim, act_dim
        self.sequence = prefix.unsqueeze(0).expand(candidates, -1)

    def feed(self, chunk: torch.Tensor) -> torch.Tensor:
        self.sequence = torch.cat([self.sequence, chunk], dim=1)
        return self.model(self.sequence, self.obs_dim, self.act_dim)[:, -1]
