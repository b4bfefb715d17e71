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
from collections.abc import Callable, Sequence
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
    embedding_init: str = "sinusoidal"  # how the value bins' embeddings (and so the tied output head) start:
    # "sinusoidal" in the bin index, so neighbouring bins start alike; "normal", GPT-2's N(0, 0.02) per entry

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.embedding_init not in EMBEDDING_INITS:
            raise ConfigError(
                f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}, got {self.embedding_init!r}"
            )


EMBEDDING_INITS = ("sinusoidal", "normal")
INIT_STD = 0.02  # of every weight at initialization (GPT-2)


def sinusoidal_bin_embeddings(dim: int, device=None) -> torch.Tensor:
    """[NUM_BINS, dim] initial embeddings of the value bins, smooth in the bin index and led by its slow waves.

    Bins are ordered values, but a table initialized at random knows nothing of their order: each bin must learn
    its place from its own few samples. Here bin i starts as the sines and cosines of i at dim // 2 frequencies,
    geometrically spaced from a period of 4 bins to one of 4096 (so the slowest is monotone over the 1024 bins),
    each wave with an amplitude proportional to the square root of its period; then centred over the bins and
    scaled to the init's std. An odd last column stays 0.

    The slow waves matter. The output head is tied to this table, so a bin's logit is ``h . E_bin``; with E led
    by the slowest sine (nearly linear in i) and cosine (nearly quadratic), moving ``h`` along them shifts the
    predicted distribution up or down the bins. Predicting the next value from the last one and the action (a
    cart that speeds up by 0.1 * a per step) becomes a smooth map instead of a table of (value, action) pairs.
    Measured (``experiments/benchmarks/embedding_init.py``: tiny TDMs, 1,200 steps on 40 random-action cartpole
    episodes): held-out NLL of the next cart velocity 2.30 with this init, 2.62 with ``normal``, and 4.30 with
    every wave at the same amplitude (this init before), which never used the action (4.29 with the actions
    shuffled). On the demo's expert data, held-out NLL 2.28, as with equal amplitudes (2.25-2.28).
    """
    pairs = dim // 2
    index = torch.arange(NUM_BINS, dtype=torch.float64, device=device)[:, None]
    octaves = torch.linspace(1.0, math.log2(NUM_BINS) + 1, pairs, dtype=torch.float64, device=device)
    rate, amplitude = math.pi * 2.0**-octaves, 2.0 ** (octaves / 2)  # periods 4..4096 bins; amplitude ~ sqrt(period)
    out = torch.zeros(NUM_BINS, dim, dtype=torch.float64, device=device)
    out[:, :pairs] = torch.sin(index * rate) * amplitude
    out[:, pairs : 2 * pairs] = torch.cos(index * rate) * amplitude
    out[:, : 2 * pairs] -= out[:, : 2 * pairs].mean(0)
    return (out * INIT_STD / out[:, : 2 * pairs].std()).float()


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
    """Keys and values of one attention layer while decoding B requests of K candidates each.

    Each request's history (prefix) is encoded once, B histories side by side (left-padded to the longest),
    and shared by its K candidates without copying: the candidates are folded into the query axis, so a
    prefix is read once per head as one matrix product. Each candidate appends its own tokens to a
    preallocated suffix buffer; rows are request-major (row = b * K + k).
    """

    def __init__(self, requests: int, candidates: int, n_head: int, head_dim: int, max_suffix: int, device, dtype):
        self.B, self.K = requests, candidates
        self.prefix_k: torch.Tensor | None = None  # [B, H, P, D]
        self.prefix_v: torch.Tensor | None = None
        self.prefix_mask: torch.Tensor | None = None  # [B, 1, 1, P] -inf on padding, or None without padding
        self.k = torch.empty(requests * candidates, n_head, max_suffix, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.filled = 0  # suffix tokens written so far

    def encode_prefix(self, q, k, v, valid: torch.Tensor | None) -> torch.Tensor:
        """Causal attention over the B histories; ``valid`` [B, P] is False on left padding (None: no padding)."""
        self.prefix_k, self.prefix_v = k, v
        if valid is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        P = q.shape[2]
        causal = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=q.device)  # a padded query attends to itself, never NaN
        allowed = (causal & valid[:, None, None, :]) | eye  # [B, 1, P, P]
        self.prefix_mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
        self.prefix_mask = self.prefix_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        R, H, c, D = q.shape  # R = B * K rows
        B, K, P = self.B, self.K, self.prefix_k.shape[2]
        s0, s1 = self.filled, self.filled + c
        self.k[:, :, s0:s1], self.v[:, :, s0:s1] = k, v
        self.filled = s1
        scale = 1.0 / math.sqrt(D)
        # [B*K, H, c, D] -> [B, H, K*c, D]: each request's prefix is multiplied once for all its candidates.
        q_fold = q.view(B, K, H, c, D).transpose(1, 2).reshape(B, H, K * c, D)
        scores_prefix = q_fold @ self.prefix_k.transpose(2, 3)  # [B, H, K*c, P]
        if self.prefix_mask is not None:
            scores_prefix = scores_prefix + self.prefix_mask
        scores_prefix = scores_prefix.view(B, H, K, c, P).transpose(1, 2).reshape(R, H, c, P)
        scores_suffix = q @ self.k[:, :, :s1].transpose(2, 3)  # [R, H, c, s1]
        if c > 1:  # causal within the chunk just written
            future = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
            scores_suffix[..., s0:s1] = scores_suffix[..., s0:s1].masked_fill(future, float("-inf"))
        weights = (torch.cat([scores_prefix, scores_suffix], dim=-1) * scale).softmax(dim=-1)
        w_prefix = weights[..., :P].reshape(B, K, H, c, P).transpose(1, 2).reshape(B, H, K * c, P)
        out_prefix = (w_prefix @ self.prefix_v).view(B, H, K, c, D).transpose(1, 2).reshape(R, H, c, D)
        return out_prefix + weights[..., P:] @ self.v[:, :, :s1]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TDMConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, valid: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3×[B,H,T,D]
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        elif cache.prefix_k is None:
            y = cache.encode_prefix(q, k, v, valid)
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

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, valid: torch.Tensor | None = None):
        x = x + self.drop(self.attn(self.ln1(x), cache, valid))
        return x + self.mlp(self.ln2(x))


def _layout_tensors(obs_dim, act_dim, device):
    """n and m as [B, 1] (or scalar) long tensors so per-row layouts broadcast over positions."""
    n = torch.as_tensor(obs_dim, device=device).reshape(-1, 1)
    m = torch.as_tensor(act_dim, device=device).reshape(-1, 1)
    return n, m


def token_kinds(positions: torch.Tensor, obs_dim, act_dim) -> tuple[torch.Tensor, torch.Tensor]:
    """(position within timestep, kind) of tokens at window positions ``positions`` [T] or [B, T] (a window
    starts at a timestep boundary). ``obs_dim``/``act_dim`` are ints or [B] tensors (one layout per row)."""
    n, m = _layout_tensors(obs_dim, act_dim, positions.device)
    step_pos = positions.view(-1, positions.shape[-1]) % (n + m + 2)  # [B or 1, T]
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
        if cfg.embedding_init == "sinusoidal":
            with torch.no_grad():
                self.tok_emb.weight[:NUM_BINS] = sinusoidal_bin_embeddings(cfg.d_model, self.tok_emb.weight.device)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
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
        """One token id per row from next-token logits [R, V], among the value bins only."""
        logits = logits[:, :NUM_BINS]
        if greedy:
            return logits.argmax(dim=-1)
        # Inverse-CDF sampling: one uniform draw per row (torch.multinomial draws one per bin).
        cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator) * cdf[:, -1:]
        return torch.searchsorted(cdf, u).squeeze(1).clamp(max=NUM_BINS - 1)

    def _mean_action(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean of the predicted action-entry distribution, [R], from next-token logits [R, V]."""
        centres = decode_actions(torch.arange(NUM_BINS, device=logits.device), logits.float())
        return logits[:, :NUM_BINS].float().softmax(dim=-1) @ centres

    @torch.no_grad()
    def imagine(self, history: History, actions: torch.Tensor | None = None, **options) -> Imagined:
        """Predict what K candidate action sequences lead to, from one history (paper §4.1).

        history: the real interaction, ending with o_t, r_t. actions: [K, N, m] in [-1, 1]. Returns obs
        [K, N, n], rewards [K, N] and the actions [K, N, m]. Options are those of :meth:`imagine_batch`
        (``reward_fn`` in place of ``reward_fns``; ``noise`` [K, N, m] for proposals).
        """
        if "reward_fn" in options:
            options["reward_fns"] = [options.pop("reward_fn")]
        if options.get("noise") is not None:
            options["noise"] = torch.as_tensor(options["noise"]).unsqueeze(0)
        if actions is not None:
            actions = torch.as_tensor(actions).unsqueeze(0)
        return self.imagine_batch([history], actions, **options).squeeze(0)

    @torch.no_grad()
    def imagine_batch(
        self,
        histories: Sequence[History],
        actions: torch.Tensor | None = None,
        *,
        noise: torch.Tensor | None = None,
        reward_fns: Sequence[RewardFn | None] | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        naive: bool = False,
        return_logits: bool = False,
    ) -> Imagined:
        """Imagine B requests of K candidates each in one batched decode (the ModelServer's merged batch).

        histories: B real interactions of one layout (n, m), each ending with o_t, r_t; each is encoded once
        and its KV cache shared by its K candidates. actions: [B, K, N, m] in [-1, 1], teacher-forced. Or,
        for the proposal planner (§5.1.1), ``actions=None`` and ``noise`` [B, K, N, m]: every action is the
        model's BC mean action at that point of the imagined trajectory plus the noise, clipped.
        reward_fns[b](next_obs [K, n], action [K, m]) -> [K]: when given, request b's rewards are computed
        from the predicted observations (eq. 5) and fed back without a decode step; otherwise they are
        decoded (eq. 6). Give all B or none. ``naive`` re-encodes the whole sequence for every token (one
        request only): the reference for tests and benchmarks, never for use. ``return_logits`` adds the
        logits of every decoded token, [B, K, N, tokens decoded per step, V].
        """
        B = len(histories)
        if B < 1:
            raise ConfigError("imagine_batch needs at least one history")
        layout = histories[0].layout
        if any(h.layout != layout for h in histories):
            raise ConfigError("histories decoded together must share one layout (observation and action dims)")
        n, m = layout.obs_dim, layout.act_dim
        self.check_layout(n, m)
        proposal = actions is None
        given = noise if proposal else actions
        if given is None:
            raise ConfigError("give actions [B, K, N, m], or noise [B, K, N, m] to decode proposal actions")
        given = torch.as_tensor(given, dtype=torch.float32, device=self.device)
        what = "noise" if proposal else "actions"
        if given.ndim != 4 or given.shape[0] != B or given.shape[3] != m or min(given.shape[1:3]) < 1:
            raise ConfigError(
                f"{what} must be [{B}, K >= 1, N >= 1, {m}] for these histories, got {tuple(given.shape)}"
            )
        _, K, N, _ = given.shape
        reward_fns = list(reward_fns) if reward_fns is not None else [None] * B
        if len(reward_fns) != B or (None in reward_fns and any(f is not None for f in reward_fns)):
            raise ConfigError(f"reward_fns must give all {B} requests a reward function, or none")
        decode_rewards = reward_fns[0] is None
        imagined_tokens = N * layout.tokens_per_step
        layout.check_horizon(N, self.cfg.context)
        prefixes = [torch.as_tensor(h.tokens(self.cfg.context - imagined_tokens)).long() for h in histories]
        if naive and B != 1:
            raise ConfigError("the naive decoder takes one history")
        decoder = (_NaiveDecoder if naive else _CachedDecoder)(self, prefixes, K, imagined_tokens, n, m)

        R = B * K  # decoded rows, request-major
        given = given.reshape(R, N, m)
        actions = given.clone() if proposal else given
        action_tokens = None if proposal else encode_actions(actions)  # [R, N, m]
        sep = torch.full((R, 1), SEPARATOR, dtype=torch.long, device=self.device)
        obs_tokens = torch.empty(R, N, n, dtype=torch.long, device=self.device)
        rewards = torch.empty(R, N, device=self.device)
        logits_out = []

        def decode(chunk):
            logits = decoder.feed(chunk)
            if return_logits:
                logits_out.append(logits)
            return logits

        pending = sep  # known tokens not yet fed: they go in as one chunk before the next decoded token
        for step in range(N):
            if proposal:  # a_{t+step}: BC mean action, conditioned on what was imagined so far, plus noise
                for j in range(m):
                    mean = self._mean_action(decode(pending))
                    actions[:, step, j] = (mean + given[:, step, j]).clamp(-1.0, 1.0)
                    pending = encode_actions(actions[:, step, j : j + 1])
            else:
                pending = torch.cat([pending, action_tokens[:, step]], dim=1)
            for i in range(n):  # o_{t+step+1}, one token at a time
                obs_tokens[:, step, i] = self._pick(decode(pending), greedy, generator)
                pending = obs_tokens[:, step, i : i + 1]
            if decode_rewards:  # r_{t+step+1} decoded by the model
                reward_token = self._pick(decode(pending), greedy, generator)
                rewards[:, step] = decode_values(reward_token, rewards)
                pending = reward_token[:, None]
            else:  # computed from o_{t+step+1}: it joins the next chunk, no decode step of its own
                next_obs = decode_values(obs_tokens[:, step], rewards).view(B, K, n)
                step_actions = actions[:, step].view(B, K, m)
                values = [fn(next_obs[b], step_actions[b]) for b, fn in enumerate(reward_fns)]
                rewards[:, step] = torch.cat([torch.as_tensor(v, device=self.device).reshape(K) for v in values])
                reward_token = encode_values(rewards[:, step], "rewards from reward_fn")
                pending = torch.cat([pending, reward_token[:, None]], dim=1)
            pending = torch.cat([pending, sep], dim=1)
        logits = None
        if return_logits:
            logits = torch.stack(logits_out, dim=1).view(B, K, N, -1, self.cfg.vocab_size)
        return Imagined(
            obs=decode_values(obs_tokens, rewards).view(B, K, N, n),
            rewards=rewards.view(B, K, N),
            actions=actions.view(B, K, N, m),
            logits=logits,
        )

    @torch.no_grad()
    def act(self, history: History, **options) -> torch.Tensor:
        """The BC-policy view: decode a_t given the history ending in o_t, r_t. Returns [samples, m]."""
        return self.act_batch([history], **options)[0]

    @torch.no_grad()
    def act_batch(
        self,
        histories: Sequence[History],
        *,
        samples: int = 1,
        greedy: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """BC actions for B histories of one layout in one batched decode -> [B, samples, m]."""
        B = len(histories)
        layout = histories[0].layout
        if any(h.layout != layout for h in histories):
            raise ConfigError("histories decoded together must share one layout (observation and action dims)")
        n, m = layout.obs_dim, layout.act_dim
        self.check_layout(n, m)
        prefixes = [torch.as_tensor(h.tokens(self.cfg.context - m - 1)).long() for h in histories]
        decoder = _CachedDecoder(self, prefixes, samples, m + 1, n, m)
        tokens = torch.empty(B * samples, m, dtype=torch.long, device=self.device)
        chunk = torch.full((B * samples, 1), SEPARATOR, dtype=torch.long, device=self.device)
        for i in range(m):
            tokens[:, i] = self._pick(decoder.feed(chunk), greedy, generator)
            chunk = tokens[:, i : i + 1]
        return decode_actions(tokens, self.tok_emb.weight).float().view(B, samples, m)


RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Imagined:
    """What :meth:`TDM.imagine_batch` predicts: obs [..., N, n], rewards [..., N], actions [..., N, m]."""

    obs: torch.Tensor
    rewards: torch.Tensor
    actions: torch.Tensor
    logits: torch.Tensor | None = None  # [..., N, decoded tokens per step, V], on request

    def squeeze(self, dim: int) -> Imagined:
        return Imagined(
            *(None if t is None else t.squeeze(dim) for t in (self.obs, self.rewards, self.actions, self.logits))
        )


class _CachedDecoder:
    """Feeds tokens through the model with a KV cache: B prefixes once, then K candidate suffixes for each."""

    def __init__(
        self, model: TDM, prefixes: list[torch.Tensor], candidates: int, max_new: int, obs_dim: int, act_dim: int
    ):
        cfg, device = model.cfg, model.device
        self.model, self.obs_dim, self.act_dim = model, obs_dim, act_dim
        B = len(prefixes)
        lengths = torch.tensor([len(p) for p in prefixes], device=device)
        P = int(lengths.max())
        pad = P - lengths  # left padding, so every row's last prefix token is its o_t, r_t
        tokens = torch.full((B, P), PAD, dtype=torch.long, device=device)
        for b, p in enumerate(prefixes):
            tokens[b, int(pad[b]) :] = p.to(device)
        positions = (torch.arange(P, device=device) - pad[:, None]).clamp(min=0)  # [B, P] window positions
        valid = torch.arange(P, device=device)[None] >= pad[:, None]  # [B, P] False on padding
        if bool(valid.all()):
            valid = None  # no padding: plain causal attention
        w = model.tok_emb.weight
        self.caches = [
            LayerCache(B, candidates, cfg.n_head, cfg.d_model // cfg.n_head, max_new, w.device, w.dtype)
            for _ in range(cfg.n_layer)
        ]
        self.next_position = lengths.repeat_interleave(candidates)[:, None]  # [R, 1]
        self._run(tokens, positions, valid)

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        x = model._embed(tokens, positions, self.obs_dim, self.act_dim)
        for block, cache in zip(model.blocks, self.caches, strict=True):
            x = block(x, cache, valid)
        return model.head(model.ln_f(x[:, -1]))

    def feed(self, chunk: torch.Tensor) -> torch.Tensor:
        """chunk: [R, c] tokens -> logits [R, V] of the token after the chunk."""
        positions = self.next_position + torch.arange(chunk.shape[1], device=chunk.device)
        self.next_position = self.next_position + chunk.shape[1]
        return self._run(chunk, positions)


class _NaiveDecoder:
    """Reference decoder for one history: keeps the whole sequence and re-encodes it for every new token."""

    def __init__(
        self, model: TDM, prefixes: list[torch.Tensor], candidates: int, max_new: int, obs_dim: int, act_dim: int
    ):
        self.model, self.obs_dim, self.act_dim = model, obs_dim, act_dim
        self.sequence = prefixes[0].to(model.device).unsqueeze(0).expand(candidates, -1)

    def feed(self, chunk: torch.Tensor) -> torch.Tensor:
        self.sequence = torch.cat([self.sequence, chunk], dim=1)
        return self.model(self.sequence, self.obs_dim, self.act_dim)[:, -1]
