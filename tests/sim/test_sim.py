import dataclasses
import itertools
import math

import pytest
import torch

from copd_lab.config import SimConfig
from copd_lab.sim import net
from copd_lab.sim.batch import SimPayload
from copd_lab.sim.tasks import SimTasks
from copd_lab.sim.world import SimWorld
from copd_lab.world import Batch, Request

DOMAINS = ("text", "image", "video")
SMALL = SimConfig(shared_features=2, own_features=1, train_prompts=20, eval_prompts=3, answer_len=2, digits=3, styles=2,
                  filler=1, base_steps=5)  # V = 7: every one of the 49 answers of a prompt can be enumerated


def test_answers_and_score_match_a_naive_reference():
    cfg = SimConfig(shared_features=3, own_features=2, train_prompts=30, eval_prompts=10, answer_len=3, digits=4,
                    styles=2, filler=3)
    tasks = SimTasks.build(cfg, 3)
    q, m = cfg.digits, cfg.styles
    for i in range(len(tasks.domain)):  # digit t = argmax_q G_{d,t,q} · x, written m * Q + digit in style m
        d, x = int(tasks.domain[i]), tasks.features[i]
        digits = [max(range(q), key=lambda k: float(tasks.rules[d, t, k] @ x)) for t in range(cfg.answer_len)]
        assert tasks.answers[i].tolist() == [[style * q + a for a in digits] for style in range(m)]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(len(tasks.domain), (200,), generator=gen)
    tokens = torch.randint(tasks.vocab_size, (200, 3), generator=gen)
    tokens[:20] = tasks.answers[prompt[:20], 1]  # style 1, all right
    tokens[20:30] = tasks.answers[prompt[20:30], 0]
    tokens[20:30, 2] += q  # style 0 then style 1: not an answer
    reward, correct = tasks.score_prompts(prompt, tokens)
    for i in range(200):
        right = any(tokens[i].tolist() == tasks.answers[prompt[i], style].tolist() for style in range(m))
        assert correct[i].item() == reward[i].item() == float(right)
    assert correct[:20].eq(1).all() and correct[20:30].eq(0).all()


def test_the_knobs_shape_the_rules():
    """G_d = √s C u + √c K_d u + √(1-s-c) P_d v_d: shared skill is one rule on the shared features, conflict
    opposed rules there (summing to 0 over domains), the rest each domain's own features only."""
    fs, fo = SimConfig().shared_features, SimConfig().own_features

    def rules(**knobs):
        return SimTasks.build(SimConfig(**knobs), 3).rules  # [D, T, Q, F]

    same = rules(shared_skill=1.0, conflict=0.0)
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[0], same[2]) and (same[..., fs:] == 0).all()
    opposed = rules(shared_skill=0.0, conflict=1.0)
    assert torch.allclose(opposed.sum(0), torch.zeros_like(opposed[0]), atol=1e-5) and (opposed[..., fs:] == 0).all()
    own = rules(shared_skill=0.0, conflict=0.0)
    assert (own[..., :fs] == 0).all()
    for d in range(3):  # domain d's rule reads its own block of features only
        block = torch.zeros(own.shape[-1], dtype=torch.bool)
        block[fs + d * fo: fs + (d + 1) * fo] = True
        assert (own[d][..., ~block] == 0).all() and (own[d][..., block] != 0).all()
    tasks = SimTasks.build(SimConfig(), 3)
    for d in range(3):  # a prompt has the shared features and its domain's own block, zeros elsewhere
        x = tasks.features[tasks.domain == d]
        nonzero = (x != 0).any(0)
        assert nonzero[:fs].all() and nonzero[fs + d * fo: fs + (d + 1) * fo].all() and nonzero.sum() == fs + fo


def test_train_and_eval_prompts_are_disjoint_draws():
    cfg = SimConfig()
    tasks = SimTasks.build(cfg, 3)
    n_train = 3 * cfg.train_prompts
    assert tasks.features.shape == (n_train + 3 * cfg.eval_prompts, cfg.n_features(3))
    train, evals = tasks.features[:n_train], tasks.features[n_train:]
    assert torch.cdist(evals, train).min() > 0.1  # no eval prompt is a train prompt
    w = world()
    batch = w.sample([Request(0, (1,))], 0, 1, 1.0, greedy=True, every_prompt=True)
    assert batch.payload.prompt[0].tolist() == list(range(n_train + cfg.eval_prompts, n_train + 2 * cfg.eval_prompts))
    drawn = w.sample([Request(0, (1,))], 64, 2, 1.0)
    assert drawn.payload.prompt.min() >= cfg.train_prompts and drawn.payload.prompt.max() < 2 * cfg.train_prompts
    pooled = w.sample([Request(0, (0, 1, 2))], 6, 2, 1.0)  # a pooled prompt's domain is drawn; its group shares it
    domain = pooled.domain[0].view(6, 2)
    assert bool((domain[:, 0] == domain[:, 1]).all()) and set(domain.flatten().tolist()) <= {0, 1, 2}
    first = pooled.payload.prompt[0] - pooled.payload.content[0]  # each prompt is one of its domain's train prompts
    assert first.tolist() == (domain[:, 0] * cfg.train_prompts).tolist()


def test_the_base_is_capable_deterministic_and_spread_over_styles():
    """At defaults the warm-started base answers 20-60 % of held-out prompts of every domain, its first token keeps
    over 1 nat of entropy, and it depends on the task seed only."""
    w = world()
    accuracy = w.exact_accuracy([Request(0, (d,)) for d in range(3)])
    assert ((accuracy > 0.2) & (accuracy < 0.6)).all(), accuracy
    batch = w.sample([Request(0, (d,)) for d in range(3)], 0, 1, 1.0, every_prompt=True)
    first = w.full_logprobs(batch, [0, 0, 0], grad=False)[:, :, 0]
    assert (-(first.exp() * first).sum(-1)).mean() > 1.0
    assert torch.equal(world(seed=5).flat_weights([0]), w.flat_weights([0]))
    other = SimWorld(SimConfig(task_seed=1, lr=0.01), DOMAINS)
    other.reset(1, 0)
    assert not torch.equal(other.flat_weights([0]), w.flat_weights([0]))
    random = SimWorld(SimConfig(base_steps=0, lr=0.01), DOMAINS)
    random.reset(1, 0)
    assert (random.exact_accuracy([Request(0, (d,)) for d in range(3)]) < accuracy).all()


def test_prompt_logits_match_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    q, m, filler, t, f = 3, 2, 1, 2, 4
    v = q * m + filler
    for hidden, private in ((0, 1.0), (3, 1.0), (0, 0.0), (3, 0.3)):
        shape = net.NetShape(f, t, q, m, v, hidden, 2, private)
        shapes = net.param_shapes(shape)
        flat = torch.randn(3, sum(math.prod(s) for s in shapes.values()), generator=gen)
        blocks = net.split(flat, shapes)
        where, x = torch.tensor([2, 0]), torch.randn(2, 6, f, generator=gen)
        domain = torch.randint(2, (2, 6), generator=gen)
        got = net.prompt_logits(blocks, where, x, domain, shape)
        for r in range(2):
            b = {name: block[where[r]] for name, block in blocks.items()}
            for p in range(6):
                units = [(x[r, p] @ b["hidden"][:, j] + b["hidden_bias"][j]) * b["gate"][domain[r, p], j] /
                         math.sqrt(hidden) for j in range(hidden)]  # the domain-gated hidden layer
                inputs = torch.cat([x[r, p], torch.stack(units)]) if hidden else x[r, p]
                for position in range(t):
                    for token in range(v):
                        column = position * v + token
                        expected = math.sqrt(private) * (inputs @ b["weight"][:, column]) + b["bias"][column]
                        if token < q * m:  # a style's digit: its style's logit, and the digit's row every style shares
                            expected = expected + b["style"][position, token // q]
                            expected = expected + math.sqrt(1 - private) * (inputs @ b["rule"][:, position * q +
                                                                                               token % q])
                        assert abs(got[r, p, position, token] - expected) < 1e-5, (hidden, private)


def test_adam_step_matches_torch_adam():
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 6, generator=gen)
    reference = [torch.nn.Parameter(row.clone()) for row in weights]
    optimizers = [torch.optim.Adam([p], lr=0.01) for p in reference]
    m, v, t = torch.zeros_like(weights), torch.zeros_like(weights), torch.zeros(2, 1)
    for _ in range(5):
        grad = torch.randn(2, 6, generator=gen)
        net.adam_step_(weights, grad, m, v, t, 0.01)
        for p, g, opt in zip(reference, grad, optimizers):
            p.grad = g.clone()
            opt.step()
    assert torch.allclose(weights, torch.stack([p.detach() for p in reference]), atol=1e-6)


def world(slots=4, seed=0):
    w = SimWorld(SimConfig(lr=0.01), DOMAINS)
    w.reset(slots, seed)
    return w


def test_greedy_every_prompt_covers_each_prompt_once():
    w = world()
    batch = w.sample([Request(0, (1,))], 0, 1, 1.0, greedy=True, every_prompt=True)
    assert batch.tokens.shape == (1, 128, w.cfg.answer_len) and batch.payload.content[0].tolist() == list(range(128))
    again = w.sample([Request(0, (1,))], 0, 1, 1.0, greedy=True, every_prompt=True)
    assert torch.equal(batch.tokens, again.tokens)
    first = w.sample([Request(0, (1, 2))], 5, 2, 1.0, greedy=True, every_prompt=True)  # the gap's subset
    assert first.payload.content[0].tolist() == [s for _ in range(2) for s in range(5)]  # per prompt
    assert first.payload.group == 2 and first.domain[0].tolist() == [1] * 10 + [2] * 10
    assert torch.equal(first.tokens[0, :10:2], batch.tokens[0, :5])


def test_sampling_follows_the_policy():
    # empirical first-token frequencies match the policy's distribution
    w = world(slots=2)
    batch = w.sample([Request(1, (0,))], 1, 4000, 1.0)
    probs = w.full_logprobs(batch, [1], grad=False)[0, 0, 0].exp()
    counts = torch.bincount(batch.tokens[0, :, 0], minlength=w.vocab_size).float()  # one prompt: all rollouts
    assert torch.allclose(counts / counts.sum(), probs, atol=0.03)
    assert len(list(itertools.islice(iter(batch.tokens), 1))) == 1


def test_sampling_follows_the_policy_at_every_position_and_temperature():
    # at each position, token frequencies match the policy's probabilities averaged over the sampled prefixes
    w = world(slots=2)
    for temperature in (1.0, 0.7):
        batch = w.sample([Request(1, (0,))], 1, 20000, temperature)
        probs = w.full_logprobs(batch, [1], grad=False)[0].exp()  # [N, T, V]
        for t in range(batch.tokens.shape[-1]):
            counts = torch.bincount(batch.tokens[0, :, t], minlength=w.vocab_size).float()
            assert torch.allclose(counts / counts.sum(), probs[:, t].mean(0), atol=0.015)


def test_rescoring_a_batch_reuses_its_sampler_log_probs_exactly():
    w = world()
    batch = w.sample([Request(1, (0,)), Request(2, (1, 2))], 4, 4, 1.0)
    copy = batch.take([0, 1])  # without the sampler's scores: scored again from the tables
    assert torch.equal(w.full_logprobs(batch, [1, 2], grad=False), w.full_logprobs(copy, [1, 2], grad=False))
    grads = [w.flat_grads(w.token_logprobs(b, [1, 2], grad=True).sum(), [1, 2]) for b in (batch, copy)]
    assert torch.equal(*grads)


def test_rows_that_need_no_score_are_left_out():
    w = world()
    batch = w.sample([Request(1, (0,)), Request(2, (1,)), Request(3, (2,))], 4, 4, 1.0)
    full = w.full_logprobs(batch, [3, 1, 2], grad=False)
    for slots in ([3, -1, 2], [-1, -1, 2]):  # a few unneeded rows, or mostly unneeded ones (then zeros)
        some = w.full_logprobs(batch, slots, grad=False)
        needed = [i for i, s in enumerate(slots) if s >= 0]
        assert torch.equal(some[needed], full[needed])
    assert (w.full_logprobs(batch, [-1, -1, 2], grad=False)[:2] == 0).all()


def all_answers(w: SimWorld, request: Request, prompts: list[int], temperature: float = 1.0) -> Batch:
    """A batch of every one of the V^T answers to each of `prompts` (a row each), for `request`'s slot, scored at
    `temperature`."""
    v, t, r = w.vocab_size, w.cfg.answer_len, len(prompts)
    sequences = torch.tensor(list(itertools.product(range(v), repeat=t)))  # [V^T, T]
    n = len(sequences)
    prev = torch.cat([torch.full((n, 1), v), sequences[:, :-1]], 1)
    domain = w.tasks.domain[prompts][:, None].expand(r, n)
    return Batch([request] * r, domain, sequences.expand(r, n, t), torch.ones(r, n, t), torch.zeros(r, n),
                 torch.zeros(r, n), torch.zeros(r, n, t),
                 SimPayload(torch.zeros(r, 1), torch.tensor(prompts)[:, None], prev.expand(r, n, t), n, temperature))


def eval_prompts(w: SimWorld, domain: int) -> list[int]:
    return (w.tasks.first_prompt(torch.tensor(domain), eval=True) + torch.arange(w.cfg.eval_prompts)).tolist()


def trained_small_world() -> SimWorld:
    w = SimWorld(SMALL, DOMAINS)
    w.reset(3, 0)
    with torch.no_grad():
        w.flat[1] += torch.randn(w.n_params, generator=torch.Generator().manual_seed(1))
    return w


def test_exact_accuracy_equals_the_sum_over_every_answer_sequence():
    """acc_exact: P(right) summed over the M right paths, against every one of the V^T answers scored by the
    world's own full log-probs, each weighed by the verifier's correctness."""
    w = trained_small_world()
    requests = [Request(1, (0,)), Request(1, (2,)), Request(0, (1,)), Request(2, (0,))]
    got = w.exact_accuracy(requests)
    for r, request in enumerate(requests):
        prompts = eval_prompts(w, request.domains[0])
        batch = all_answers(w, request, prompts)
        logp = w.full_logprobs(batch, [request.slot] * len(prompts), grad=False)
        p = logp.gather(-1, batch.tokens[..., None]).squeeze(-1).sum(-1).exp()  # [prompts, V^T]
        assert torch.allclose(p.sum(-1), torch.ones(len(prompts)), atol=1e-5)
        _, correct = w.tasks.score_prompts(batch.payload.prompt.expand_as(p), batch.tokens)
        assert abs(got[r].item() - (p * correct).sum(-1).mean().item()) < 1e-6, (r, got[r])
    assert got[0] != got[2]  # a trained slot and the base differ


def test_exact_accuracy_at_a_temperature_and_on_train_prompts_equals_the_enumerated_sum():
    """The calibrated accuracy's parts: exact accuracy of the policy at τ (logits / τ), on eval or train prompts."""
    w = trained_small_world()
    request = Request(1, (1,))
    for temperature, split in ((0.3, "eval"), (0.3, "train"), (1.7, "train")):
        got = w.exact_accuracy([request], temperature=temperature, split=split).item()
        first = w.tasks.first_prompt(torch.tensor(1), eval=split == "eval")
        prompts = (first + torch.arange(w.cfg.eval_prompts)).tolist()
        batch = all_answers(w, request, prompts, temperature)
        p = w.full_logprobs(batch, [1] * len(prompts), grad=False)
        p = p.gather(-1, batch.tokens[..., None]).squeeze(-1).sum(-1).exp()
        _, correct = w.tasks.score_prompts(batch.payload.prompt.expand_as(p), batch.tokens)
        assert abs(got - (p * correct).sum(-1).mean().item()) < 1e-6, (temperature, split)
    assert w.exact_accuracy([request], temperature=0.3).item() != w.exact_accuracy([request]).item()


def test_exact_accuracy_gradient_matches_the_enumerated_one():
    """exact_accuracy(grad=True) then flat_grads: the gradient of the expected accuracy, against autograd through
    the sum over every answer."""
    w = trained_small_world()
    request = Request(1, (2,))
    got = w.flat_grads(w.exact_accuracy([request], grad=True).sum(), [1])
    prompts = eval_prompts(w, 2)
    batch = all_answers(w, request, prompts)
    logp = w.token_logprobs(batch, [1] * len(prompts), grad=True).sum(-1)
    _, correct = w.tasks.score_prompts(batch.payload.prompt.expand_as(logp), batch.tokens)
    expected = w.flat_grads((logp.exp() * correct).sum(-1).mean(), [1])
    assert got.abs().sum() > 0 and torch.allclose(got, expected, atol=1e-6)


def test_a_shorter_answer_is_masked_scored_and_counted_on_its_own_positions():
    """sim.answer_lens: a domain's answers are right on their first T_d tokens; the rest is masked out of every loss
    and metric, and exact accuracy sums the paths' first T_d tokens only (against the first token's log-probs)."""
    cfg = dataclasses.replace(SMALL, answer_lens=(1, 2, 2))
    w = SimWorld(cfg, DOMAINS)
    w.reset(2, 0)
    with torch.no_grad():
        w.flat[1] += torch.randn(w.n_params, generator=torch.Generator().manual_seed(3))
    batch = w.sample([Request(1, (0,)), Request(1, (1,))], 5, 3, 1.0)
    assert batch.mask[0, :, 1].sum() == 0 and batch.mask[0, :, 0].all() and batch.mask[1].all()
    digits = w.tasks.digits_of[batch.payload.prompt[0].repeat_interleave(3)]  # [N, T]
    first_right = (batch.tokens[0, :, 0] % cfg.digits == digits[:, 0]) & (batch.tokens[0, :, 0] < cfg.digits *
                                                                          cfg.styles)
    assert torch.equal(batch.correct[0].bool(), first_right)  # the second token is never looked at
    got = w.exact_accuracy([Request(1, (0,))]).item()
    prompts = eval_prompts(w, 0)
    every = all_answers(w, Request(1, (0,)), prompts)
    first = w.full_logprobs(every, [1] * len(prompts), grad=False)[:, 0, 0].exp()  # [prompts, V] at position 0
    answer = w.tasks.digits_of[prompts, 0]
    want = sum(first[:, m * cfg.digits + answer].diagonal() for m in range(cfg.styles)).mean().item()
    assert abs(got - want) < 1e-6


def test_answer_lens_must_be_one_per_domain_and_at_most_answer_len():
    from copd_lab.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=r"answer_lens = \(1, 5\) is not allowed: empty or integers in \[1, "):
        SimConfig(answer_lens=(1, 5))
    with pytest.raises(ConfigError, match=r"sim.answer_lens = \(1, 2\) is not allowed: .* one length per domain \(3\)"):
        ExperimentConfig(sim=SimConfig(answer_lens=(1, 2)))
