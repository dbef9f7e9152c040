import itertools

import torch

from copd_lab.config import MergeConfig, SimConfig
from copd_lab.policy import Request
from copd_lab.sim.tasks import SimTasks
from copd_lab.sim.world import SimWorld

DOMAINS = ("text", "image", "video")


def test_task_score_matches_a_naive_reference():
    cfg = SimConfig(answer_len=3, digits=4, patterns=2, prompts_per_domain=5, shared_skill=0.4)
    tasks = SimTasks.build(cfg, 3, seed=1)
    assert int(tasks.shared.sum()) == 2
    for s in range(5):  # shared contents have one answer in every domain
        same = all(torch.equal(tasks.targets[0, s], tasks.targets[d, s]) for d in range(3))
        assert same or not tasks.shared[s]
    gen = torch.Generator().manual_seed(0)
    domain, content = torch.randint(3, (50,), generator=gen), torch.randint(5, (50,), generator=gen)
    tokens = torch.randint(tasks.vocab_size, (50, 3), generator=gen)
    tokens[:5] = tasks.targets[domain[:5], content[:5]] + 4  # pattern 1, all right
    reward, correct = tasks.score(domain, content, tokens)
    for i in range(50):
        answer = tasks.targets[domain[i], content[i]].tolist()
        best = max(sum(tokens[i, t].item() == m * 4 + answer[t] for t in range(3)) / 3 for m in range(2))
        assert abs(reward[i].item() - best) < 1e-6 and correct[i].item() == float(best == 1.0)
    assert correct[:5].eq(1).all()


def world(slots=4, seed=0):
    w = SimWorld(SimConfig(), DOMAINS, lr=0.02)
    w.reset(slots, seed)
    return w


def test_sample_shapes_and_ratio_one():
    w = world()
    requests = [Request(1, (0,)), Request(2, (0, 1, 2)), Request(3, (2,), teacher=1, beta=1.0)]
    batch = w.sample(requests, prompts=8, group=8, temperature=1.0)
    assert batch.tokens.shape == (3, 64, 4) and batch.rewards.shape == (3, 64)
    assert batch.domain[1].tolist()[:24:8] == [0, 1, 2]  # a pooled request splits its prompts
    assert batch.tokens.max() < w.vocab_size
    lp = w.token_logprobs(batch, [1, 2, 3], grad=True)
    assert torch.allclose(lp.detach(), batch.sample_logprobs, atol=1e-5)
    full = w.full_logprobs(batch, [1, 2, 3], grad=False)
    assert torch.allclose(full.exp().sum(-1), torch.ones(3, 64, 4), atol=1e-5)


def test_greedy_every_prompt_covers_each_prompt_once():
    w = world()
    batch = w.sample([Request(0, (1,))], 0, 1, 1.0, greedy=True, every_prompt=True)
    assert batch.tokens.shape == (1, 16, 4) and batch.payload.content[0].tolist() == list(range(16))
    again = w.sample([Request(0, (1,))], 0, 1, 1.0, greedy=True, every_prompt=True)
    assert torch.equal(batch.tokens, again.tokens)
    first = w.sample([Request(0, (1, 2))], 5, 2, 1.0, greedy=True, every_prompt=True)  # the gap's subset
    assert first.payload.content[0].tolist() == [s for _ in range(2) for s in range(5) for _ in range(2)]
    assert first.domain[0].tolist() == [1] * 10 + [2] * 10
    assert torch.equal(first.tokens[0, :10:2], batch.tokens[0, :5])


def test_step_moves_only_trained_slots_and_copy_merge():
    w = world(slots=5)
    before = w.flat_weights([0, 1, 2, 3, 4])
    batch = w.sample([Request(1, (0,)), Request(2, (1,))], 4, 4, 1.0)
    w.step(w.token_logprobs(batch, [1, 2], grad=True).sum(), [1, 2])
    after = w.flat_weights([0, 1, 2, 3, 4])
    moved = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert moved == [False, True, True, False, False]
    w.copy(1, 3)
    assert torch.equal(w.flat_weights([3]), w.flat_weights([1]))
    w.merge([1, 2], 4, MergeConfig())
    assert torch.allclose(w.flat_weights([4])[0], (after[1] + after[2]) / 2, atol=1e-6)


def test_frozen_moments_do_not_leak():
    # a slot that trained and then stops must not keep moving on its Adam momentum
    w = world(slots=3)
    for slots in ([1], [1], [2]):
        batch = w.sample([Request(s, (0,)) for s in slots], 4, 4, 1.0)
        snapshot = w.flat_weights([1])
        w.step(w.token_logprobs(batch, slots, grad=True).sum(), slots)
    assert torch.equal(snapshot, w.flat_weights([1]))


def test_state_dict_round_trip_resumes_identically():
    w = world()
    state = w.state_dict()
    first = w.sample([Request(1, (0,))], 4, 4, 1.0).tokens
    w.load_state_dict(state)
    assert torch.equal(first, w.sample([Request(1, (0,))], 4, 4, 1.0).tokens)


def test_sampling_follows_the_policy():
    # empirical first-token frequencies match the policy's distribution
    w = world(slots=2)
    batch = w.sample([Request(1, (0,))], 1, 4000, 1.0)
    probs = w.full_logprobs(batch, [1], grad=False)[0, 0, 0].exp()
    counts = torch.bincount(batch.tokens[0, :, 0][batch.payload.content[0] == batch.payload.content[0, 0]],
                            minlength=w.vocab_size).float()
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


def test_exact_accuracy_equals_the_sum_over_every_answer_sequence():
    """acc_exact: P(right) summed over the M right paths, against every one of the V^T sequences scored by the
    world's own full log-probs, each weighed by the verifier's correctness."""
    from copd_lab.policy import Batch
    from copd_lab.sim.world import SimPayload

    cfg = SimConfig(answer_len=2, digits=3, patterns=2, prompts_per_domain=3)
    w = SimWorld(cfg, DOMAINS, lr=0.02)
    w.reset(3, 0)
    with torch.no_grad():
        w.flat[1] += torch.randn(w.n_params, generator=torch.Generator().manual_seed(1))
    requests = [Request(1, (0,)), Request(1, (2,)), Request(0, (1,)), Request(2, (0,))]
    got = w.exact_accuracy(requests)
    v, s = w.vocab_size, cfg.prompts_per_domain
    sequences = torch.tensor(list(itertools.product(range(v), repeat=cfg.answer_len)))  # [V^T, T]
    for r, request in enumerate(requests):
        d = request.domains[0]
        per_prompt = []
        for content in range(s):
            n = len(sequences)
            prompt = torch.full((1, n), d * s + content)
            prev = torch.cat([torch.full((n, 1), v), sequences[:, :-1]], 1)[None]
            batch = Batch([request], torch.full((1, n), d), sequences[None], torch.ones(1, n, cfg.answer_len),
                          torch.zeros(1, n), torch.zeros(1, n), torch.zeros(1, n, cfg.answer_len),
                          SimPayload(torch.full((1, n), content), prompt, prev, 1.0))
            logp = w.full_logprobs(batch, [request.slot], grad=False)[0]
            p = logp.gather(-1, sequences[..., None]).squeeze(-1).sum(-1).exp()  # [V^T]
            assert abs(p.sum().item() - 1) < 1e-5
            _, correct = w.tasks.score_prompts(prompt[0], sequences)
            per_prompt.append((p * correct).sum())
        assert abs(got[r].item() - torch.stack(per_prompt).mean().item()) < 1e-6, (r, got[r])
    assert got[0] != got[2]  # a trained slot and the base differ
