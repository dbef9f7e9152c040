"""Screen a warm-start idea cheaply: a few hundred steps on one suite or skill, then the probe per skill.

The rows of "How the recipe was chosen" in tiny_models/README.md come from this script, for example:

    python -m tiny_models.screen --pixels clip --skills count --steps 1500          # the old normalisation
    python -m tiny_models.screen --skills count --steps 800                         # black at 0
    python -m tiny_models.screen --skills count,compare,add,order --options colon --aux names --steps 1500

It prints the mean completion loss of every 100-step window (against the skill's prior in the final table), then
the probe's table (tiny_models/probe.py) on 256 held-out rows. The prompt variants (`--options`,
`--question-first`) patch the suites' prompt format in this process only, to test whether a format is what
stands in the way; the shipped suites and checkpoint are not changed by them.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from copd_lab.tasks import TaskSuite, build_suites
from copd_lab.tasks import image as image_tasks
from copd_lab.tasks import text as text_tasks
from copd_lab.tasks import video as video_tasks
from copd_lab.tasks.drawing import COLOURS, blank, pick_colours, repeat, scatter, to_png
from copd_lab.tasks.generate import generated_suite
from copd_lab.vlm import processing
from tiny_models.build import build_tiny
from tiny_models.probe import markdown, probe, square_counts
from tiny_models.warm_start import completion_loss, lr_factor

OPTIONS = {
    "index": lambda labels: " ".join(f"{i}={label}" for i, label in enumerate(labels)),  # the suites' own
    "colon": lambda labels: " ".join(f"{i}: {label}" for i, label in enumerate(labels)),  # "0: red": the " red" token
    "label": lambda labels: " ".join(f"{label}={i}" for i, label in enumerate(labels)),  # "red=0"
}


def _question_first(processor, prompt, modality, num_images=1):
    content = [{"type": "text", "text": prompt}]
    content += [{"type": "image"}] * num_images if modality == "image" else []
    content += [{"type": "video"}] if modality == "video" else []
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def _one_colour(rng, skill, difficulty):
    """"How many red squares?" on a picture with red squares only: counting with no colour to match."""
    (target,) = pick_colours(rng, 1)
    n = int(rng.integers(0, 5))
    canvas = blank()
    scatter(rng, canvas, repeat({target: n}))
    return f"How many {target} squares?", n, [to_png(canvas)]


def aux_batch(kind: str, suite: TaskSuite, rows, rng: random.Random) -> tuple[list[str], list[str]]:
    """(prompts, targets) of an auxiliary batch on `rows`' pictures: `names` lists the colours present in
    palette order (" red blue"), `describe` every colour's count in random order ("red 2 cyan 0 ...")."""
    names, prompts, targets = list(COLOURS), [], []
    for images in rows["images"]:
        counts = square_counts(images)[: len(names)]
        if kind == "names":
            prompts.append("Which colours are there?")
            targets.append("".join(f" {names[j]}" for j in range(len(names)) if counts[j]))
        else:
            prompts.append("Count every colour.")
            targets.append(" ".join(f"{names[j]} {counts[j]}" for j in rng.sample(range(len(names)), len(names))))
    return prompts, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default="image", help="comma-separated suites")
    parser.add_argument("--skills", default="count,compare,add,order", help="comma-separated skills kept")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16, help="rows per suite per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr-scale", type=float, default=1.0, help="the vision tower's lr over --lr")
    parser.add_argument("--merger-scale", type=float, default=1.0, help="scale the merger's last layer at init")
    parser.add_argument("--pixels", choices=("zero", "clip"), default="zero",
                        help="zero: black is 0 (the build's); clip: CLIP's mean and std (the previous one)")
    parser.add_argument("--options", choices=tuple(OPTIONS), default="index", help="how options are written")
    parser.add_argument("--question-first", action="store_true", help="the question before the picture")
    parser.add_argument("--one-colour", action="store_true", help="image counting with one colour a picture")
    parser.add_argument("--aux", choices=("none", "names", "describe"), default="none",
                        help="an auxiliary batch a step on the image suite's pictures")
    parser.add_argument("--sizes", default="",
                        help="TinySizes overrides, e.g. num_attention_heads=4,num_key_value_heads=2")
    parser.add_argument("--seed", type=int, default=0, help="init and batch seed (the suites use seed 0)")
    parser.add_argument("--n-train", type=int, default=4096, help="train rows per suite (before the skill filter)")
    parser.add_argument("--n-eval", type=int, default=256, help="held-out rows per suite the probe reads")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for module in (image_tasks, video_tasks, text_tasks):
        module.options_text = OPTIONS[args.options]
    if args.question_first:
        processing.chat_text = _question_first
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.sizes.split(",") if item)}
    model, processor = build_tiny(args.seed, **sizes)
    if args.pixels == "clip":
        processor.image_processor.image_mean, processor.image_processor.image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    with torch.no_grad():
        model.model.visual.merger.mlp[-1].weight.mul_(args.merger_scale)
    if args.one_colour:
        suites = {"image": generated_suite("image", "image", _one_colour, args.n_train, args.n_eval, 0, 1)}
    else:
        suites = build_suites(args.domains.split(","), n_train=args.n_train, n_eval=args.n_eval, seed=0)
    skills = set(args.skills.split(","))
    suites = {d: TaskSuite(s.domain, s.modality, s.train.filter(lambda k: k in skills, input_columns="skill"),
                           s.eval.filter(lambda k: k in skills, input_columns="skill"), s.verifier)
              for d, s in suites.items()}
    vision = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    rest = [p for n, p in model.named_parameters() if ".visual." not in f".{n}"]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": args.lr},
                                   {"params": vision, "lr": args.lr * args.vision_lr_scale}], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 50))
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    model.train()
    history, start = [], time.perf_counter()
    for step in range(args.steps):
        optimizer.zero_grad()
        losses = {}
        for domain, suite in suites.items():
            rows = suite.train.select(rng.sample(range(len(suite.train)), args.batch))
            loss = completion_loss(model, processor, suite, rows, rows["answer"])
            (loss / len(suites)).backward()
            losses[domain] = loss.item()
        if args.aux != "none" and "image" in suites:
            suite = suites["image"]
            rows = suite.train.select(rng.sample(range(len(suite.train)), args.batch))
            prompts, targets = aux_batch(args.aux, suite, rows, rng)
            rows = rows.remove_columns("prompt").add_column("prompt", prompts)
            loss = completion_loss(model, processor, suite, rows, targets)
            loss.backward()
            losses[args.aux] = loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(losses)
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            window = history[-100:]
            means = {k: round(sum(h[k] for h in window) / len(window), 3) for k in window[-1]}
            print(f"step {step + 1}: window loss {means} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    print(markdown(probe(model, processor, suites, n_eval=args.n_eval, n_probe=512, seed=args.seed)))


if __name__ == "__main__":
    main()
