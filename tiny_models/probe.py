"""Does a tiny VLM use its images? Per domain and skill, what it answers against what it could.

For each suite and skill, on held-out rows:

- `prior`: the loss per completion token of a model that knows the format and only the skill's answer
  distribution (the train answers' entropy spread over the completion's tokens); `loss`: the model's
  own completion loss per token, on train rows (`loss_train`, what the warm start optimised) and held out;
- `greedy` and `sampled` accuracy (temperature 1, the RL rollouts' sampling) against `chance` (one over the
  number of answers the skill has) and `majority` (always the commonest train answer); `top` is the share of
  held-out rows whose greedy answer is the model's commonest one (1.0: it answers a constant);
- linear probes, fitted on train rows and scored on the held-out ones: `tower>ans` reads the answer from the
  vision tower's output tokens and the question's words, `lm>ans` from the language model's last hidden state
  at the answer position (the one that predicts the digit); `tower>px` (from the tower's tokens summed) and
  `lm>px` read what the picture holds
  (the number of squares of every colour in every frame, the mean accuracy over those counts; `px_major` is
  that mean for always the commonest count, which a probe must beat to have read anything). A tower that
  holds the answer while the model answers a constant is a language model that drops its image.

    python -m tiny_models.probe --model tiny_models/qwen2vl-tiny          # --random-init: the untrained model
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from copd_lab.tasks import TaskSuite, build_suites
from copd_lab.tasks.base import SKILLS
from copd_lab.tasks.drawing import COLOURS, SQUARE, WHITE
from copd_lab.vlm.families import family_of
from copd_lab.vlm.model_io import load_vlm
from copd_lab.vlm.processing import extend_for_completion, prepare_batch
from tiny_models.build import build_tiny
from tiny_models.warm_start import DOMAINS, completion_ids, generated_answers

PALETTE = (*COLOURS.values(), WHITE)
COLUMNS = ("prior", "loss_train", "loss", "chance", "majority", "greedy", "sampled", "top",
           "tower>ans", "lm>ans", "px_major", "tower>px", "lm>px")


def answer_entropy(answers: Sequence[str]) -> float:
    """Entropy in nats of the empirical distribution of `answers`."""
    counts = np.array(list(Counter(answers).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def square_counts(frames: Sequence) -> list[int]:
    """Squares of each palette colour (six colours and white) in each frame: what a picture holds."""
    out = []
    for frame in frames:
        pixels = np.asarray(frame.convert("RGB")).reshape(-1, 3)
        for colour in PALETTE:
            out.append(int((pixels == colour).all(axis=1).sum()) // (SQUARE * SQUARE))
    return out


def fit_probe(train_x: torch.Tensor, train_y: Sequence, test_x: torch.Tensor, test_y: Sequence,
              steps: int = 200, weight_decay: float = 1e-3) -> float:
    """Held-out accuracy of a multinomial logistic regression (standardised features, L-BFGS, L2)."""
    classes = sorted(set(train_y) | set(test_y))
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[c] for c in train_y])
    y_test = torch.tensor([index[c] for c in test_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(xs.shape[1], len(classes))
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xs), y_train) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float((linear(xt).argmax(-1) == y_test).float().mean())


@dataclass
class Features:
    """Per row: the tower's output tokens flattened, the LM state at the answer position, and the
    completion loss (summed over tokens) with its token count."""

    tower: torch.Tensor | None
    lm: torch.Tensor
    loss_sum: torch.Tensor
    tokens: torch.Tensor


@torch.no_grad()
def features(model, processor, suite: TaskSuite, rows, batch_size: int = 32) -> Features:
    """One teacher-forced forward over prompt + `<answer>{answer}</answer>` EOS per row."""
    family = family_of(model)
    towers, lms, losses, counts = [], [], [], []
    for begin in range(0, len(rows), batch_size):
        chunk = rows.select(range(begin, min(begin + batch_size, len(rows))))
        inputs = prepare_batch(processor, chunk["prompt"], chunk["images"], suite.modality)
        if suite.modality != "text":
            items, _ = family.encode(model, inputs, suite.modality)
            towers.append(torch.stack([item.flatten() for item in items]))
        ids, mask = completion_ids(processor, chunk["answer"])
        prompt_length = inputs["input_ids"].shape[1]
        out = model(**extend_for_completion(inputs, ids, mask), output_hidden_states=True)
        logits = out.logits[:, prompt_length - 1 : -1].float()
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * mask
        losses.append(token_loss.sum(1))
        counts.append(mask.sum(1))
        lms.append(out.hidden_states[-1][:, prompt_length].float())  # after <answer>: predicts the digit
    return Features(torch.cat(towers) if towers else None, torch.cat(lms), torch.cat(losses), torch.cat(counts))


def _answers(model, processor, suite: TaskSuite, rows, greedy: bool, seed: int = 0) -> list[str | None]:
    """Each row's generated answer as text (the answer column's form), None where it is not well-formed."""
    torch.manual_seed(seed)  # sampling draws from torch's global RNG
    return [None if a is None else str(a) for a in generated_answers(model, processor, suite, rows, greedy)]


def _token_sums(tower: torch.Tensor, model) -> torch.Tensor:
    """Flattened tower outputs [rows, tokens x width] -> their sum over tokens [rows, width]."""
    return tower.reshape(tower.shape[0], -1, model.config.text_config.hidden_size).sum(1)


def _question_words(processor, prompts: Sequence[str]) -> torch.Tensor:
    """Bag of the prompt's token ids, so a probe on the tower's output knows what was asked."""
    vocab = len(processor.tokenizer)
    bags = torch.zeros(len(prompts), vocab)
    for i, prompt in enumerate(prompts):
        bags[i, processor.tokenizer(prompt, add_special_tokens=False).input_ids] = 1.0
    return bags


def probe_suite(model, processor, suite: TaskSuite, n_eval: int, n_probe: int, seed: int = 0
                ) -> dict[str, dict[str, float]]:
    """The COLUMNS for every skill of one suite (see the module docstring), keyed by skill."""
    held_out = suite.eval.select(range(min(n_eval, len(suite.eval))))
    train = suite.train.select(range(min(n_probe, len(suite.train))))
    f_train, f_test = features(model, processor, suite, train), features(model, processor, suite, held_out)
    greedy = _answers(model, processor, suite, held_out, greedy=True)
    sampled = _answers(model, processor, suite, held_out, greedy=False, seed=seed)
    # columns read once (a Dataset builds a column's list on every access)
    train_skill, train_answer, test_skill, test_answer = (train["skill"], train["answer"], held_out["skill"],
                                                          held_out["answer"])
    suite_skill, suite_answer = suite.train["skill"], suite.train["answer"]
    if suite.modality != "text":
        words_train = _question_words(processor, train["prompt"])
        words_test = _question_words(processor, held_out["prompt"])
        pixels_train = np.array([square_counts(images) for images in train["images"]])
        pixels_test = np.array([square_counts(images) for images in held_out["images"]])
    table = {}
    for skill in SKILLS:
        tr = [i for i, s in enumerate(train_skill) if s == skill]
        te = [i for i, s in enumerate(test_skill) if s == skill]
        all_train = [a for a, s in zip(suite_answer, suite_skill, strict=True) if s == skill]
        truth = [test_answer[i] for i in te]
        if not te or not all_train:
            continue
        prior_nats = answer_entropy(all_train)
        commonest = Counter(all_train).most_common(1)[0][0]
        mine = [greedy[i] for i in te]
        row = {
            "prior": prior_nats * len(te) / float(f_test.tokens[te].sum()),
            "loss_train": float(f_train.loss_sum[tr].sum() / f_train.tokens[tr].sum()) if tr else math.nan,
            "loss": float(f_test.loss_sum[te].sum() / f_test.tokens[te].sum()),
            "chance": 1.0 / len(set(all_train)),
            "majority": float(np.mean([t == commonest for t in truth])),
            "greedy": float(np.mean([g == t for g, t in zip(mine, truth, strict=True)])),
            "sampled": float(np.mean([sampled[i] == t for i, t in zip(te, truth, strict=True)])),
            "top": Counter(mine).most_common(1)[0][1] / len(mine),
        }
        train_y = [train_answer[i] for i in tr]
        enough = len(tr) >= 8 and len(set(train_y)) > 1
        row["lm>ans"] = fit_probe(f_train.lm[tr], train_y, f_test.lm[te], truth) if enough else math.nan
        if suite.modality != "text" and enough:
            x_train = torch.cat([f_train.tower[tr], words_train[tr]], 1)
            x_test = torch.cat([f_test.tower[te], words_test[te]], 1)
            row["tower>ans"] = fit_probe(x_train, train_y, x_test, truth)
        else:
            row["tower>ans"] = math.nan
        table[skill] = row
    if suite.modality != "text":
        varied = [j for j in range(pixels_train.shape[1]) if len(set(pixels_train[:, j])) > 1]
        commonest = [Counter(pixels_train[:, j].tolist()).most_common(1)[0][0] for j in varied]
        px_major = float(np.mean([np.mean(pixels_test[:, j] == c) for j, c in zip(varied, commonest, strict=True)]))
        for row in table.values():
            row["px_major"] = px_major
        # The tower's tokens summed, not flattened: a count is a sum over tokens, and 2,560 flattened features
        # from 2,048 rows overfit (the flattened probe scored the majority's 0.73 on the shipped tower).
        summed_train, summed_test = _token_sums(f_train.tower, model), _token_sums(f_test.tower, model)
        for name, train_x, test_x in (("tower>px", summed_train, summed_test), ("lm>px", f_train.lm, f_test.lm)):
            scores = [fit_probe(train_x, pixels_train[:, j].tolist(), test_x, pixels_test[:, j].tolist())
                      for j in varied]
            for row in table.values():
                row[name] = float(np.mean(scores)) if scores else math.nan
    else:
        for row in table.values():
            row["tower>px"] = row["lm>px"] = row["px_major"] = math.nan
    return table


def probe(model, processor, suites: Mapping[str, TaskSuite], n_eval: int = 512, n_probe: int = 2048,
          seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{domain: {skill: {column: value}}} for every suite; see `probe_suite`."""
    model.eval()
    return {domain: probe_suite(model, processor, suite, n_eval, n_probe, seed) for domain, suite in suites.items()}


def domain_summary(table: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean over a domain's skills of every column (the skills are balanced in the built-in suites)."""
    return {column: float(np.nanmean([row[column] for row in table.values()])) for column in COLUMNS}


def markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The probe table: a row per domain and skill, then the domain's mean."""
    lines = ["| domain | skill | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for domain, table in results.items():
        for skill, row in [*table.items(), ("mean", domain_summary(table))]:
            cells = ["" if math.isnan(row[c]) else f"{row[c]:.3f}" if c.startswith(("prior", "loss")) else
                     f"{row[c]:.2f}" for c in COLUMNS]
            lines.append(f"| {domain} | {skill} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny_models/qwen2vl-tiny", help="checkpoint folder")
    parser.add_argument("--random-init", action="store_true",
                        help="probe the randomly initialised tiny model (build_tiny's seed) instead")
    parser.add_argument("--n-eval", type=int, default=512, help="held-out rows per domain")
    parser.add_argument("--n-probe", type=int, default=2048, help="train rows per domain the probes fit on")
    parser.add_argument("--difficulty", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated suites")
    parser.add_argument("--seed", type=int, default=0, help="suite seed (0: the warm start's rows)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = build_tiny(args.seed) if args.random_init else load_vlm(args.model)
    domains = [d for d in args.domains.split(",") if d]
    suites = build_suites(domains, n_train=4096, n_eval=max(args.n_eval, 1), seed=args.seed,
                          difficulty=args.difficulty)
    start = time.perf_counter()
    results = probe(model, processor, suites, args.n_eval, args.n_probe, args.seed)
    print(markdown(results))
    print(f"\n{'random init' if args.random_init else args.model}, difficulty {args.difficulty}, "
          f"{args.n_eval} held-out rows a domain, probes fitted on {args.n_probe}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
