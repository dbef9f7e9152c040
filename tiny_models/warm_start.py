"""The supervised warm start of a tiny VLM: an SFT so RLVR starts from a base it can improve.

A randomly initialised model never writes `<answer>N</answer>`, so every reward would be 0 and RL
would have no signal; a base that knows only the format and the answer prior gives RL no skill to
sharpen; a fully trained one would leave RL nothing to do. The shipped recipe (2000 steps, pixels
normalised so that black is 0, see build.py) ends between: the format always, skills that read the
picture learnt (image addition and counting, video counting and motion), the ones that match a colour
word in the options against the picture (image compare and order, video order) still at chance, and
sampled accuracy below greedy. `tiny_models/probe.py` measures all of it, skill by skill.
`noise` can replace a fraction of the targets by other training rows' answers (keeping the answer
distribution) to cap what the labels teach; the shipped recipe uses none.

Targets are `<answer>{answer}</answer>` followed by the EOS token; the loss is the mean
cross-entropy over those completion tokens only, prompt tokens carry none.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from copd_lab.tasks import TaskSuite, build_suites, parse_answer
from copd_lab.vlm.processing import extend_for_completion, placeholder_token_ids, prepare_batch

DOMAINS = ("text", "image", "video")


def warm_start_suites(seed: int = 0, n_train: int = 4096, n_eval: int = 128) -> dict[str, TaskSuite]:
    """The built-in suites at difficulty 1 that the shipped checkpoint was warm-started and measured on."""
    return build_suites(DOMAINS, n_train=n_train, n_eval=n_eval, seed=seed)


def _batch(suite: TaskSuite, rows: Sequence[Mapping[str, Any]], processor):
    return prepare_batch(processor, [r["prompt"] for r in rows], [r["images"] for r in rows], suite.modality)


def completion_ids(processor, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids of `<answer>{a}</answer>` + EOS for each answer, and their 0/1 mask."""
    tokenizer = processor.tokenizer
    rows = [
        tokenizer(f"<answer>{a}</answer>", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for a in answers
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def completion_loss(
    model, processor, suite: TaskSuite, rows: Sequence[Mapping[str, Any]], answers: Sequence[str]
) -> torch.Tensor:
    """Mean cross-entropy of the target completions given the rows' prompts (one forward)."""
    inputs = _batch(suite, rows, processor)
    ids, mask = completion_ids(processor, answers)
    prompt_length = inputs["input_ids"].shape[1]
    logits = model(**extend_for_completion(inputs, ids, mask)).logits[:, prompt_length - 1 : -1]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none")
    return (losses * mask.flatten()).sum() / mask.sum()


def lr_factor(step: int, warmup: int) -> float:
    """Multiplier of the lr at `step` (from 0): a linear warm-up over `warmup` steps, then 1."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def warm_start(
    model,
    processor,
    suites: Mapping[str, TaskSuite],
    steps: int = 2000,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    noise: float = 0.0,
    warmup: int = 50,
) -> dict[str, Any]:
    """Full-weight SFT with AdamW: each step sums one batch's completion loss from every suite.

    The lr rises linearly over `warmup` steps and then stays constant (a cosine decay to 0 at 2e-3 was
    tried and ended lower: 0.48 / 0.44 / 0.38 greedy on text / image / video against 0.65 / 0.31 / 0.54).
    `noise` is the fraction of targets replaced by a random training answer of the same suite.
    Returns the first and last step's mean loss, per-domain last losses, steps and seconds.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise={noise!r}; expected a fraction in [0, 1]")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup))
    answers = {domain: suite.train["answer"] for domain, suite in suites.items()}
    model.train()
    start, history = time.perf_counter(), []
    for _ in range(steps):
        optimizer.zero_grad()
        losses = {}
        for domain, suite in suites.items():
            indices = rng.sample(range(len(suite.train)), min(batch_size, len(suite.train)))
            rows = suite.train.select(indices)
            targets = [rng.choice(answers[domain]) if rng.random() < noise else r["answer"] for r in rows]
            loss = completion_loss(model, processor, suite, rows, targets)
            (loss / len(suites)).backward()
            losses[domain] = loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(losses)
    model.eval()
    mean = [sum(h.values()) / len(h) for h in history]
    return {
        "steps": steps,
        "first_loss": mean[0] if mean else float("nan"),
        "last_loss": mean[-1] if mean else float("nan"),
        "last_losses": history[-1] if history else {},
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def generated_answers(model, processor, suite: TaskSuite, rows, greedy: bool = True, batch_size: int = 32,
                      max_new_tokens: int = 12) -> list[int | None]:
    """The answer parsed from each row's generated completion (None where it has none well-formed); sampling is
    from the full distribution (temperature 1, top_k 0, top_p 1), as the RL rollouts sample."""
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    model.eval()
    answers = []
    for begin in range(0, len(rows), batch_size):
        inputs = _batch(suite, rows.select(range(begin, min(begin + batch_size, len(rows)))), processor)
        out = model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens,
                             suppress_tokens=placeholder_token_ids(processor))
        texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answers += [parse_answer(text) for text in texts]
    return answers


def evaluate(
    model, processor, suite: TaskSuite, n: int, greedy: bool = True, batch_size: int = 32, max_new_tokens: int = 12
) -> tuple[float, float]:
    """(accuracy, well-formed rate) of generated completions on the first n held-out rows."""
    rows = suite.eval.select(range(min(n, len(suite.eval))))
    answers = generated_answers(model, processor, suite, rows, greedy, batch_size, max_new_tokens)
    truth = [int(a) for a in rows["answer"]]
    correct = sum(a == t for a, t in zip(answers, truth, strict=True))
    return correct / len(rows), sum(a is not None for a in answers) / len(rows)
