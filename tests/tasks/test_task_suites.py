"""The built-in suites: determinism, disjoint splits, skills, image shapes, and answers re-derived
from the prompt and the pixels by solvers written independently of the generators."""

import io
import re

import datasets
import numpy as np
import PIL.Image
import pytest

from copd_lab.tasks import FEATURES, SKILLS, answer_reward, build_suite, build_suites
from copd_lab.tasks.drawing import COLOURS

DOMAINS = ("text", "image", "video")
FRAMES = {"text": 0, "image": 1, "video": 4}


@pytest.fixture(scope="module")
def suites():
    """Every built-in suite at every difficulty, small."""
    return {
        (d, level): build_suite(d, n_train=120, n_eval=40, seed=7, difficulty=level)
        for d in DOMAINS
        for level in (1, 2, 3)
    }


def as_table(dataset: datasets.Dataset):
    return dataset.with_format("arrow")[:]


def row_keys(dataset: datasets.Dataset) -> list:
    """A row's prompt and image bytes: what makes two rows the same example."""
    table = as_table(dataset)
    images = [tuple(image["bytes"] for image in row) for row in table["images"].to_pylist()]
    return list(zip(table["prompt"].to_pylist(), images, strict=True))


# ---- independent solvers -------------------------------------------------------------------------

UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
UNITS += " sixteen seventeen eighteen nineteen"
WORDS = {word: value for value, word in enumerate(UNITS.split())}
WORDS |= {
    word: 10 * tens
    for tens, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}


def read_number(text: str) -> int:
    return int(text) if text.isdigit() else sum(WORDS[part] for part in text.split("-"))


def options(prompt: str) -> list[str]:
    """Option labels in order: "0=red 1=blue" -> ["red", "blue"] (checking the numbering)."""
    found = re.findall(r"(\d)=(\S+)", prompt)
    assert [int(i) for i, _ in found] == list(range(len(found)))
    return [label for _, label in found]


def squares(pixels: np.ndarray, colour: str) -> int:
    """Squares of a colour: pixels of that colour with no same-coloured pixel above or to the left."""
    mask = np.all(pixels == COLOURS[colour], axis=-1)
    above = np.zeros_like(mask)
    above[1:] = mask[:-1]
    left = np.zeros_like(mask)
    left[:, 1:] = mask[:, :-1]
    return int((mask & ~above & ~left).sum())


def solve_text(prompt: str, skill: str) -> int:
    if skill == "count":
        letter, text = re.fullmatch(r"How many (\w) in '(\w+)'\?", prompt).groups()
        return sum(c == letter for c in text)
    if skill == "compare":
        values = [read_number(label) for label in options(prompt)]
        return values.index(max(values))
    if skill == "add":
        return sum(read_number(t) for t in re.fullmatch(r"What is (.+)\?", prompt).group(1).split(" plus "))
    text = re.search(r"'(\w+)'", prompt).group(1)
    positions = [text.index(letter) for letter in options(prompt)]
    return positions.index(min(positions))


def solve_image(prompt: str, skill: str, pixels: np.ndarray) -> int:
    if skill == "count":
        return squares(pixels, re.fullmatch(r"How many (\w+) squares\?", prompt).group(1))
    if skill == "compare":
        counts = [squares(pixels, colour) for colour in options(prompt)]
        return counts.index(max(counts))
    if skill == "add":
        first, second = re.fullmatch(r"How many (\w+) and (\w+) squares in all\?", prompt).groups()
        return squares(pixels, first) + squares(pixels, second)
    column = np.flatnonzero(pixels.any(axis=(0, 2)))[0]  # the leftmost drawn pixel column
    colour = tuple(pixels[np.flatnonzero(pixels[:, column].any(axis=1))[0], column])
    return [COLOURS[name] for name in options(prompt)].index(colour)


def solve_video(prompt: str, skill: str, frames: list[np.ndarray]) -> int:
    if skill == "count":
        return sum(bool(np.all(frame == 255, axis=-1).any()) for frame in frames)
    if skill == "compare":
        colour = COLOURS[re.search(r"the (\w+) square", prompt).group(1)]
        xs = [np.nonzero(np.all(frame == colour, axis=-1))[1].mean() for frame in (frames[0], frames[-1])]
        return options(prompt).index("right" if xs[1] > xs[0] else "left")
    if skill == "add":
        colour, i, j = re.fullmatch(r"Sum of (\w+) squares in frames (\d) and (\d)\?", prompt).groups()
        return squares(frames[int(i) - 1], colour) + squares(frames[int(j) - 1], colour)
    first_seen = [
        next(t for t, f in enumerate(frames) if np.all(f == COLOURS[c], axis=-1).any())
        for c in options(prompt)
    ]
    return first_seen.index(min(first_seen))


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("level", (1, 2, 3))
def test_answers_are_right(suites, domain, level):
    suite = suites[domain, level]
    for split in (suite.train, suite.eval):
        for row in split:
            pixels = [np.asarray(image) for image in row["images"]]
            if domain == "text":
                solved = solve_text(row["prompt"], row["skill"])
            elif domain == "image":
                solved = solve_image(row["prompt"], row["skill"], pixels[0])
            else:
                solved = solve_video(row["prompt"], row["skill"], pixels)
            assert str(solved) == row["answer"], row["prompt"]
            assert answer_reward(f"so <answer>{solved}</answer>", row) == 1.0


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_data_other_seed_other_data(suites, domain):
    again = build_suite(domain, n_train=120, n_eval=40, seed=7, difficulty=1)
    other = build_suite(domain, n_train=120, n_eval=40, seed=8, difficulty=1)
    for split in ("train", "eval"):
        original = as_table(getattr(suites[domain, 1], split))
        assert as_table(getattr(again, split)).equals(original)
        assert not as_table(getattr(other, split)).equals(original)


@pytest.mark.parametrize("domain", DOMAINS)
def test_eval_split_is_its_own_stream(suites, domain):
    suite = suites[domain, 1]
    # The eval rows do not depend on how many train rows were drawn ...
    larger = build_suite(domain, n_train=200, n_eval=40, seed=7, difficulty=1)
    assert as_table(larger.eval).equals(as_table(suite.eval))
    # ... and are not the train rows again.
    train, held_out = row_keys(suite.train), row_keys(suite.eval)
    assert sum(a == b for a, b in zip(train, held_out, strict=False)) < len(held_out) // 4


def test_image_eval_rows_repeat_train_rows_only_when_trivial():
    # Image scenes come from a space far larger than the splits, so a repeat of a scene with a few
    # squares would betray a shared seed; only near-empty scenes (a count of 0) may coincide.
    suite = build_suite("image", n_train=1000, n_eval=200, seed=0, difficulty=1)
    shared = set(row_keys(suite.train)) & set(row_keys(suite.eval))
    assert len(shared) <= 5
    for _, (png,) in shared:
        assert np.asarray(PIL.Image.open(io.BytesIO(png))).any(axis=-1).sum() <= 9  # one square at most


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("level", (1, 2, 3))
def test_columns_skills_and_shapes(suites, domain, level):
    suite = suites[domain, level]
    assert suite.domain == suite.modality == domain and suite.verifier is answer_reward
    for split in (suite.train, suite.eval):
        assert split.features == FEATURES
        skills = list(split["skill"])
        counts = [skills.count(skill) for skill in SKILLS]
        assert sum(counts) == len(split) and max(counts) - min(counts) <= 1  # every skill, balanced
        assert set(split["difficulty"]) == {level}
        assert all(len(prompt) < 60 for prompt in split["prompt"])
        assert all(0 <= int(answer) <= 12 for answer in split["answer"])
        for images in split["images"]:
            assert len(images) == FRAMES[domain]
            assert all(image.mode == "RGB" and image.size == (32, 32) for image in images)


@pytest.mark.parametrize("domain", ("image", "video"))
def test_round_trip_through_disk(suites, domain, tmp_path):
    original = suites[domain, 2].train
    original.save_to_disk(str(tmp_path / domain))
    loaded = datasets.load_from_disk(str(tmp_path / domain))
    assert loaded.features == FEATURES and as_table(loaded).equals(as_table(original))
    first = [np.asarray(image) for image in loaded[0]["images"]]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(first, original[0]["images"], strict=True))


def test_build_suites_and_bad_arguments():
    built = build_suites(["video", "text"], n_train=8, n_eval=4, seed=0)
    assert list(built) == ["video", "text"] and len(built["text"].train) == 8
    with pytest.raises(ValueError, match="difficulty"):
        build_suite("text", 8, 4, seed=0, difficulty=4)
    with pytest.raises(ValueError, match="n_train"):
        build_suite("text", -1, 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        build_suite("image", 8, 4, seed=-1)
    with pytest.raises(ValueError, match="unknown suite 'audio'"):
        build_suite("audio", 8, 4, seed=0)
