"""The text suite: the four shared skills asked about short strings and numbers, no images.

    count    "How many b in 'abcab'?"                     -> 2
    compare  "Which is larger? 0=seven 1=12"              -> 1
    add      "What is 3 plus four?"                       -> 7
    order    "Which comes first in 'dbeca'? 0=c 1=a"      -> 0

Difficulty 1..3 lengthens strings, widens number ranges, mixes in number words, adds an operand
(add) and more options (order).
"""

from __future__ import annotations

import numpy as np

from copd_lab.tasks.base import TaskSuite
from copd_lab.tasks.generate import Example, addends, generated_suite, options_text

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_LETTERS = "abcdefghij"


def number_words(n: int) -> str:
    """0..99 in English words: 42 -> "forty-two"."""
    if n < 20:
        return _UNITS[n]
    tens, units = divmod(n, 10)
    return _TENS[tens - 2] + (f"-{_UNITS[units]}" if units else "")


def _spell(rng: np.random.Generator, n: int, words: bool) -> str:
    """n in digits, or (when words are allowed) in words half of the time."""
    return number_words(n) if words and rng.random() < 0.5 else str(n)


def _count(rng: np.random.Generator, difficulty: int) -> Example:
    alphabet = _LETTERS[: 2 + difficulty]
    text = "".join(rng.choice(list(alphabet), size=3 + 2 * difficulty))
    letter = str(rng.choice(list(alphabet)))
    return f"How many {letter} in '{text}'?", text.count(letter), []


def _compare(rng: np.random.Generator, difficulty: int) -> Example:
    high = {1: 10, 2: 21, 3: 100}[difficulty]
    numbers = rng.choice(high, size=2, replace=False)
    labels = [_spell(rng, int(n), words=True) for n in numbers]
    return f"Which is larger? {options_text(labels)}", int(np.argmax(numbers)), []


def _add(rng: np.random.Generator, difficulty: int) -> Example:
    budget = {1: 9, 2: 9, 3: 12}[difficulty]
    operands = addends(rng, parts=2 if difficulty < 3 else 3, most=budget, budget=budget)
    text = " plus ".join(_spell(rng, n, words=difficulty > 1) for n in operands)
    return f"What is {text}?", sum(operands), []


def _order(rng: np.random.Generator, difficulty: int) -> Example:
    text = "".join(rng.choice(list(_LETTERS), size=4 + difficulty, replace=False))
    options = [str(c) for c in rng.choice(list(text), size=1 + difficulty, replace=False)]
    first = min(range(len(options)), key=lambda i: text.index(options[i]))
    return f"Which comes first in '{text}'? {options_text(options)}", first, []


_MAKERS = {"count": _count, "compare": _compare, "add": _add, "order": _order}


def make_row(rng: np.random.Generator, skill: str, difficulty: int) -> Example:
    """One text example of the given skill."""
    return _MAKERS[skill](rng, difficulty)


def build(n_train: int, n_eval: int, seed: int, difficulty: int = 1) -> TaskSuite:
    """The text suite (domain and modality "text")."""
    return generated_suite("text", "text", make_row, n_train, n_eval, seed, difficulty)
