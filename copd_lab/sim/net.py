"""The simulator's toy policy as pure functions on batched weights: one network per weight slot.

For a prompt with features x (domain d), the answer's logits at position t after token y_{t-1} are

    logits_t = W_t · tanh(A x + E_d) + b_t + U[y_{t-1}]

A (features -> hidden) and W (hidden -> every position's logits) are the capacity all domains share; E_d
lets the network tell domains apart; the bigram U lets a response keep the style its first token chose.
The hidden part does not depend on earlier tokens, so a prompt's logits at every position are one
matmul, and sampling only adds a row of U per token.
"""

from __future__ import annotations

import torch


def param_shapes(features: int, hidden: int, domains: int, answer_len: int, vocab: int) -> dict[str, tuple]:
    """The named blocks of one slot's flat weight vector, in order."""
    return {"features_in": (features, hidden), "domain": (domains, hidden), "out_weight": (hidden, answer_len * vocab),
            "out_bias": (answer_len * vocab,), "bigram": (vocab + 1, vocab)}


def split(flat: torch.Tensor, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """[k, P] flat weights of k slots -> their named blocks, each [k, *shape] (views; split's backward is one cat)."""
    sizes = [torch.Size(s).numel() for s in shapes.values()]
    return {name: part.view(flat.shape[0], *shape) for (name, shape), part in zip(shapes.items(), flat.split(sizes, 1))}


def prompt_logits(blocks: dict[str, torch.Tensor], where: torch.Tensor, x: torch.Tensor, domain: torch.Tensor,
                  answer_len: int) -> torch.Tensor:
    """[R, P, T, V] hidden-part logits of prompts x [R, P, F] of domains `domain` [R, P] under slot where[r] of
    `blocks` (the named [k, ...] blocks of k slots)."""
    n, p = domain.shape
    a = blocks["features_in"].index_select(0, where)  # [R, F, H]
    e_all = blocks["domain"]
    e = e_all.reshape(-1, e_all.shape[-1]).index_select(0, (where[:, None] * e_all.shape[1] + domain).view(-1))
    hidden = torch.tanh(torch.baddbmm(e.view(n, p, -1), x, a))  # [R, P, H]
    out = torch.baddbmm(blocks["out_bias"].index_select(0, where)[:, None], hidden,
                        blocks["out_weight"].index_select(0, where))  # [R, P, T * V]
    return out.view(n, p, answer_len, -1)


def logprobs(hidden: torch.Tensor, bigram: torch.Tensor, bigram_first: torch.Tensor, prev: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """[R, N, T, V] log-probs of rollouts from their hidden-part logits [R, N, T, V] and previous tokens prev
    [R, N, T] (V: the start token); request r's slot's bigram starts at row bigram_first[r] ([R, 1]) of the flat
    bigram table `bigram` [k * (V + 1), V]."""
    rows = (bigram_first[:, :, None] + prev).view(-1)
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
