"""The answer format and the reward every built-in suite uses (a verifiable reward for RLVR).

A completion is free reasoning text followed by exactly one ``<answer>N</answer>`` at its end::

    "three red, two blue, so 5 <answer>5</answer>"

Rules, chosen so that the reward is unambiguous and cheap to compute on any string:

- the reasoning before the tag is at most ``MAX_REASONING_CHARS`` characters and holds no answer tag;
- ``N`` is an integer of ASCII digits, at most ``MAX_ANSWER_DIGITS`` of them, with an optional ``-``;
- ASCII spaces, tabs and newlines are allowed around ``N`` inside the tag (``<answer> 3 </answer>``
  reads as 3), because subword tokenizers of real VLMs often emit them and the value stays
  unambiguous; no other character is (no ``+``, ``3.0``, unicode digits or unicode spaces);
- only ASCII whitespace may follow ``</answer>`` (generation often ends with a newline); any other
  trailing text, a second tag or a missing tag makes the completion malformed;
- the tag and what follows it fit in ``MAX_TAIL_CHARS`` characters, so any string is judged after
  looking at no more than ``MAX_REASONING_CHARS + MAX_TAIL_CHARS`` of its characters.

Reward: 1.0 well-formed and correct, ``FORMAT_REWARD`` well-formed but wrong, 0.0 malformed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FORMAT_REWARD = 0.1
MAX_REASONING_CHARS = 400
MAX_ANSWER_DIGITS = 6
# Room for the tags, a sign, the digits and a little whitespace; longer tails are malformed.
MAX_TAIL_CHARS = 64

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
# [0-9], not \d: \d matches unicode digits such as '٣', which int() would happily accept.
_TAIL = re.compile(rf"<answer>[ \t\n]*(-?[0-9]{{1,{MAX_ANSWER_DIGITS}}})[ \t\n]*</answer>[ \t\r\n]*")


def parse_answer(completion: str) -> int | None:
    """The integer in the completion's final answer tag, or None when the completion is malformed."""
    if not isinstance(completion, str) or len(completion) > MAX_REASONING_CHARS + MAX_TAIL_CHARS:
        return None  # checked first, so a huge string costs nothing
    start = completion.find(OPEN_TAG)
    if start < 0 or start > MAX_REASONING_CHARS or len(completion) - start > MAX_TAIL_CHARS:
        return None
    if completion.count(OPEN_TAG) != 1:
        return None
    if CLOSE_TAG in completion[:start]:
        return None  # a stray closing tag in the reasoning counts as a second tag
    match = _TAIL.fullmatch(completion, start)
    return int(match.group(1)) if match else None


def is_correct(completion: str, row: Mapping[str, Any]) -> bool:
    """Whether the completion is well-formed and its answer equals the row's ``answer``."""
    value = parse_answer(completion)
    return value is not None and value == int(row["answer"])


def answer_reward(completion: str, row: Mapping[str, Any]) -> float:
    """The verifier of every built-in suite: 1.0 correct, FORMAT_REWARD well-formed but wrong, else 0."""
    value = parse_answer(completion)
    if value is None:
        return 0.0
    return 1.0 if value == int(row["answer"]) else FORMAT_REWARD
