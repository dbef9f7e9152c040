"""The simulator's toy policy as pure functions on batched weights: one softmax policy per weight slot.

For a prompt of domain d with features x, the answer's logits at position t after token y_{t-1} are

    logits_t(token m·Q + q) = √ρ · W_t[m·Q + q] x' + √(1−ρ) · R_t[q] x' + b_t + σ_t[m] + U[style of y_{t-1}]

with x' = [x; h] and h = (B x + c) ⊙ G_d / √H, a hidden layer of `sim.capacity` units whose gate G_d depends on the
prompt's domain (its modality tag): a multiplicative, domain-conditional path, so that one model can read the
shared features one way in one domain and another way in another (capacity 0: x' = x, one linear readout for
every domain, which cannot represent opposed rules). Its units are shared by every domain, so a pooled update of B
moves what the other domains read.

Where the skill lives against the style (ρ = `sim.style_private`): W gives every token its own row, so each style
learns its digits apart (private copies: a skill learnt in one style is not there in another); R is one row per
digit shared by every style (formats over one skill: a style only chooses how the answer is written). σ is one
logit per style (filler tokens have none), so that a style rises or falls as a whole, as a format or a language
does in a real model; U, by the style of the previous token (a row for filler and one for the start), lets a
response keep the style its first token chose. The x-part does not depend on earlier tokens, so a prompt's logits
at every position are a few matmuls, and sampling only adds a row of U per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from copd_lab.config import SimConfig


@dataclass(frozen=True)
class NetShape:
    """The sizes and fixed mixing weights of one simulator policy (from SimConfig and the number of domains)."""

    features: int  # F, prompt features
    answer_len: int  # T
    digits: int  # Q
    styles: int  # M
    vocab: int  # V = M * Q + filler
    hidden: int  # H, units of the domain-gated hidden layer (sim.capacity)
    domains: int  # D, gates of the hidden layer
    private: float  # ρ, share of a digit's logit read from its style's own row (sim.style_private)

    @property
    def inputs(self) -> int:
        """F + H: what the readouts read."""
        return self.features + self.hidden

    @classmethod
    def of(cls, cfg: SimConfig, n_domains: int) -> NetShape:
        return cls(cfg.n_features(n_domains), cfg.answer_len, cfg.digits, cfg.styles, cfg.vocab_size, cfg.capacity,
                   n_domains, cfg.style_private)


def param_shapes(shape: NetShape) -> dict[str, tuple]:
    """The named blocks of one slot's flat weight vector, in order."""
    f, t, v, q, m, h = shape.features, shape.answer_len, shape.vocab, shape.digits, shape.styles, shape.hidden
    return {"weight": (f + h, t * v), "bias": (t * v,), "style": (t, m), "bigram": (m + 2, v), "rule": (f + h, t * q),
            "hidden": (f, h), "hidden_bias": (h,), "gate": (shape.domains, h)}


def previous_rows(digits: int, styles: int, vocab: int) -> torch.Tensor:
    """[V + 1] the row of U each previous token reads: its style, `styles` for filler, `styles` + 1 for the start
    token V."""
    rows = torch.full((vocab + 1,), styles)
    rows[: digits * styles] = torch.arange(digits * styles) // digits
    rows[vocab] = styles + 1
    return rows


def split(flat: torch.Tensor, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """[k, P] flat weights of k slots -> their named blocks, each [k, *shape] (views; split's backward is one cat)."""
    sizes = [torch.Size(s).numel() for s in shapes.values()]
    return {name: part.view(flat.shape[0], *shape) for (name, shape), part in zip(shapes.items(), flat.split(sizes, 1))}


def prompt_logits(blocks: dict[str, torch.Tensor], where: torch.Tensor, x: torch.Tensor,
                  domain: torch.Tensor | None, shape: NetShape) -> torch.Tensor:
    """[R, P, T, V] x-part logits of prompts x [R, P, F] of domains `domain` [R, P] (None without a hidden layer)
    under slot where[r] of `blocks` (the named [k, ...] blocks of k slots); the first Q * M tokens are the styles'
    digits, the rest filler."""
    n, p, _ = x.shape
    t, q, m, v = shape.answer_len, shape.digits, shape.styles, shape.vocab
    style = blocks["style"].index_select(0, where)  # [R, T, M]
    style = torch.nn.functional.pad(style.repeat_interleave(q, -1), (0, v - m * q))
    bias = blocks["bias"].index_select(0, where) + style.view(n, -1)  # [R, T * V]
    if shape.hidden:  # the domain-gated hidden layer: h = (B x + c) ⊙ G_d / √H
        pre = torch.baddbmm(blocks["hidden_bias"].index_select(0, where)[:, None], x,
                            blocks["hidden"].index_select(0, where))  # [R, P, H]
        gate = blocks["gate"].index_select(0, where)  # [R, D, H]
        # scaled by 1/√H: Adam moves every weight by about its lr, so without it the H units' weights would move the
        # logits about √H times faster than the linear readout's (RL then lost the base's skill in a few steps)
        hidden = pre * gate.gather(1, domain[..., None].expand(n, p, shape.hidden)) / math.sqrt(shape.hidden)
        x = torch.cat([x, hidden], -1)
    rho = shape.private
    inputs = x if rho == 1.0 else x * math.sqrt(rho)  # x * 1.0 is x: skip the op
    out = torch.baddbmm(bias[:, None], inputs, blocks["weight"].index_select(0, where)).view(n, p, t, v)
    if rho < 1.0:  # the digit rows every style shares
        rule = torch.bmm(x * math.sqrt(1 - rho), blocks["rule"].index_select(0, where)).view(n, p, t, 1, q)
        shared = torch.nn.functional.pad(rule.expand(n, p, t, m, q).reshape(n, p, t, m * q), (0, v - m * q))
        out = out + shared
    return out


def logprobs(hidden: torch.Tensor, bigram: torch.Tensor, bigram_first: torch.Tensor, prev: torch.Tensor,
             rows_of: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[R, N, T, V] log-probs of rollouts from their x-part logits [R, N, T, V] and previous tokens prev
    [R, N, T] (V: the start token); request r's slot's U starts at row bigram_first[r] ([R, 1]) of the flat table
    `bigram` [k * (M + 2), V], and a previous token reads row rows_of[token] of it (previous_rows)."""
    rows = (bigram_first[:, :, None] + rows_of.index_select(0, prev.reshape(-1)).view(prev.shape)).view(-1)
    logits = hidden + bigram.index_select(0, rows).view(hidden.shape)
    return (logits if temperature == 1.0 else logits / temperature).log_softmax(-1)


BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults


def adam_step_(weights: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
               lr: float) -> None:
    """One Adam step in place on rows of weights [k, P] with their moments m, v [k, P] and step counts t [k, 1]
    (each row its own count: slots start and stop training at different ticks)."""
    (b1, b2) = BETAS
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    t.add_(1)
    weights.add_((m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt_() + EPS), alpha=-lr)
