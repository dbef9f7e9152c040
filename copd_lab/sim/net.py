"""The simulator's toy policy as pure functions on batched weights: one linear softmax policy per weight slot.

For a prompt with features x, the answer's logits at position t after token y_{t-1} are

    logits_t(token) = W_t x + b_t + σ_t[style of the token] + U[style of y_{t-1}]

W reads the shared features (the weights every domain pulls on) and each domain's own ones (weights only
that domain moves); every token has its own row, so a style's digits are learnt in that style (a style
that is sampled more also gets better: symmetry between equally rewarded styles breaks under RL). σ is
one logit per style (filler tokens have none), so that a style rises or falls as a whole, as a format or
a language does in a real model; U, by the style of the previous token (a row for filler and one for the
start), lets a response keep the style its first token chose. The
x-part does not depend on earlier tokens, so a prompt's logits at every position are one matmul, and
sampling only adds a row of U per token.
"""

from __future__ import annotations

import torch


def param_shapes(features: int, answer_len: int, vocab: int, styles: int) -> dict[str, tuple]:
    """The named blocks of one slot's flat weight vector, in order."""
    return {"weight": (features, answer_len * vocab), "bias": (answer_len * vocab,), "style": (answer_len, styles),
            "bigram": (styles + 2, vocab)}


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


def prompt_logits(blocks: dict[str, torch.Tensor], where: torch.Tensor, x: torch.Tensor, digits: int) -> torch.Tensor:
    """[R, P, T, V] x-part logits of prompts x [R, P, F] under slot where[r] of `blocks` (the named [k, ...] blocks
    of k slots); the first `digits` * styles tokens are the styles' digits, the rest filler."""
    n, p, _ = x.shape
    style = blocks["style"].index_select(0, where)  # [R, T, M]
    t, m = style.shape[1:]
    style = torch.nn.functional.pad(style.repeat_interleave(digits, -1), (0, blocks["bigram"].shape[-1] - m * digits))
    bias = blocks["bias"].index_select(0, where) + style.view(n, -1)  # [R, T * V]
    out = torch.baddbmm(bias[:, None], x, blocks["weight"].index_select(0, where))
    return out.view(n, p, t, -1)


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
