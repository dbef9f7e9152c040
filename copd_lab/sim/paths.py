"""The exact score of a simulator policy: a style's right answer is one path of T tokens, so the log-probability of
every path follows from two parts of the logits, without sampling and without building every path's logits."""

from __future__ import annotations

import torch

CHUNK = 1 << 23  # elements of the float64 exponentials one chunk of requests holds (64 MB)


def path_logprobs(hidden: torch.Tensor, u: torch.Tensor, paths: torch.Tensor, temperature: float) -> torch.Tensor:
    """[R, S, M, T] log-probs of each path's tokens paths [R, S, M, T] under logits hidden[:, :, None] + u[:, None]
    (hidden [R, S, T, V], the x-part of each prompt; u [R, M, T, V], the row of U each path's previous token reads)
    at a temperature, a chunk of requests at a time (whole, the K = 30 evaluation's would be 0.4 GB). Every op is
    per request, so a request's value does not depend on the chunk it falls in."""
    size = max(1, CHUNK // (hidden[0].numel()))
    return torch.cat([_chunk(hidden[c: c + size], u[c: c + size], paths[c: c + size], temperature)
                      for c in range(0, len(hidden), size)])


def _chunk(hidden: torch.Tensor, u: torch.Tensor, paths: torch.Tensor, temperature: float) -> torch.Tensor:
    """path_logprobs of one chunk: each token's logit minus the logsumexp over V.

    The logsumexp of a sum is a product of exponentials: Σ_v e^(h_v + u_v) = e^(max h + max u) Σ_v e^(h_v − max h)
    e^(u_v − max u), a matmul over V of [S, V] by [V, M] per position, with no [S, M, V] tensor; in float64,
    where no finite logits underflow it."""
    if temperature != 1.0:  # x / 1.0 is x: skip the op
        hidden, u = hidden / temperature, u / temperature
    c, s, t, v = hidden.shape
    m = u.shape[1]
    top_h, top_u = hidden.amax(-1, keepdim=True), u.amax(-1, keepdim=True)  # [c, S, T, 1], [c, M, T, 1]
    exp_h = (hidden - top_h).double().exp().transpose(1, 2)  # [c, T, S, V]
    exp_u = (u - top_u).double().exp().permute(0, 2, 3, 1)  # [c, T, V, M]
    total = torch.matmul(exp_h, exp_u).log().float().permute(0, 2, 3, 1)  # [c, S, M, T]
    lse = total + top_h[:, :, None, :, 0] + top_u[:, None, :, :, 0]
    index = paths[..., None]
    token = (hidden[:, :, None].expand(c, s, m, t, v).gather(-1, index) +
             u[:, None].expand(c, s, m, t, v).gather(-1, index)).squeeze(-1)
    return token - lse
