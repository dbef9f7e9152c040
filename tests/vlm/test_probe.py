"""The probe (tiny_models/probe.py): its parts against hand-worked values, and the whole table on a tiny budget."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from copd_lab.tasks import build_suites
from copd_lab.tasks.base import SKILLS
from copd_lab.tasks.drawing import COLOURS, WHITE, blank, cell_origin, draw_square
from tiny_models.build import build_tiny
from tiny_models.probe import COLUMNS, answer_entropy, fit_probe, markdown, probe, square_counts

ROOT = Path(__file__).resolve().parents[2]
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vision_embed_dim=32, vision_depth=1, vision_num_heads=2)


def test_answer_entropy_is_the_entropy_of_the_answer_frequencies():
    # 2 of "1", 1 of "0", 1 of "3": p = 1/2, 1/4, 1/4.
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert answer_entropy(["1", "0", "1", "3"]) == pytest.approx(expected)
    assert answer_entropy(["4"] * 5) == 0.0


def test_square_counts_reads_every_colour_of_every_frame():
    first, second = blank(), blank()
    for cell in (0, 9, 20):
        draw_square(first, *cell_origin(cell), COLOURS["red"])
    draw_square(first, *cell_origin(5), COLOURS["cyan"])
    draw_square(second, *cell_origin(7), WHITE)
    counts = square_counts([Image.fromarray(first), Image.fromarray(second)])
    palette = [*COLOURS, "white"]
    assert len(counts) == 2 * len(palette)
    assert counts[palette.index("red")] == 3 and counts[palette.index("cyan")] == 1
    assert sum(counts[: len(palette)]) == 4
    assert counts[len(palette) + palette.index("white")] == 1 and sum(counts[len(palette):]) == 1


def test_fit_probe_reads_a_linear_label_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 20, generator=generator)
    label = (x[:, 3] - 0.5 * x[:, 7] > 0).long().tolist()
    assert fit_probe(x[:400], label[:400], x[400:], label[400:]) > 0.95
    noise = torch.randint(0, 2, (600,), generator=generator).tolist()
    assert abs(fit_probe(x[:400], noise[:400], x[400:], noise[400:]) - 0.5) < 0.12


@pytest.fixture(scope="module")
def table():
    model, processor = build_tiny(seed=0, **SIZES)
    suites = build_suites(("text", "image", "video"), n_train=64, n_eval=24, seed=0)
    return probe(model, processor, suites, n_eval=24, n_probe=64), suites


def test_the_probe_table_on_a_tiny_budget(table):
    results, suites = table
    assert set(results) == {"text", "image", "video"}
    for domain, rows in results.items():
        assert set(rows) == set(SKILLS)
        for skill, row in rows.items():
            assert set(row) == set(COLUMNS)
            answers = [a for a, s in zip(suites[domain].train["answer"], suites[domain].train["skill"],
                                         strict=True) if s == skill]
            # Hand-worked chance: one over the distinct train answers of the skill.
            assert row["chance"] == pytest.approx(1 / len(set(answers)))
            # A random model writes no well-formed answer, so it scores 0 and its top answer is None.
            assert row["greedy"] == 0.0 and row["sampled"] == 0.0 and row["top"] == 1.0
            # Its loss is far above the answer prior (it has not learnt even the format).
            assert row["loss"] > 3 * row["prior"] > 0
            for column in ("majority", "lm>ans"):
                assert 0.0 <= row[column] <= 1.0
            if domain == "text":
                assert math.isnan(row["tower>ans"]) and math.isnan(row["tower>px"])
            else:
                assert 0.0 <= row["tower>ans"] <= 1.0 and 0.0 <= row["tower>px"] <= 1.0
    text = markdown(results)
    assert text.count("\n") == 1 + 3 * (len(SKILLS) + 1)
    assert "| image | mean |" in text


def test_prior_is_entropy_over_completion_tokens(table):
    results, suites = table
    # Image answers at difficulty 1 are single digits: <answer> d </answer> EOS, four tokens a completion.
    suite = suites["image"]
    answers = [a for a, s in zip(suite.train["answer"], suite.train["skill"], strict=True) if s == "count"]
    assert results["image"]["count"]["prior"] == pytest.approx(answer_entropy(answers) / 4)
    assert np.isfinite(results["image"]["count"]["loss_train"])


def test_screen_runs_a_variant_on_a_tiny_budget(tmp_path):
    """tiny_models/screen.py end to end (its own process: its prompt variants patch the suites' format)."""
    sizes = ",".join(f"{k}={v}" for k, v in SIZES.items())
    out = subprocess.run(
        [sys.executable, "-m", "tiny_models.screen", "--sizes", sizes, "--steps", "3", "--batch", "4",
         "--domains", "image", "--skills", "count,order", "--options", "colon", "--aux", "names",
         "--n-train", "64", "--n-eval", "16"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step 3: window loss {'image':" in out.stdout and "'names':" in out.stdout
    assert "| image | count |" in out.stdout and "| image | order |" in out.stdout
    assert "| image | add |" not in out.stdout  # the skill filter held
