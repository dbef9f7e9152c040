"""The answer format and the reward every built-in suite uses (a verifiable reward for RLVR).

A completion is free reasoning text followed by exactly one ``<answer>N</answer>`` at its end::

    "three red, two blue, so 5 <answer>5</answer>"

Rules, chosen so that the reward is unambiguous and cheap to compute on any string:

- the reasoning before the tag may be of any length and holds no answer tag (neither ``<answer>`` nor
  ``</answer>``); there is deliberately no length limit: the rollout engine's ``max_new_tokens``
  already bounds a completion, a real VLM's chain of thought runs to thousands of tokens and must be
  judged on its answer, and the judgement below is linear in the string's length (``str.find`` over
  the reasoning, a regex only on the short tail), so no string is expensive to judge;
- ``N`` is an integer of ASCII digits, at most ``MAX_ANSWER_DIGITS`` of them, with an optional ``-``;
- ASCII whitespace (space, tab, ``\r``, ``\n``) is allowed around ``N`` inside the tag
  (``<answer> 3 </answer>`` and ``<answer>3\r\n</answer>`` read as 3), because subword tokenizers of
  real VLMs often emit it and the value stays unambiguous; no other character is (no ``+``, ``3.0``,
  unicode digits or unicode spaces);
- only ASCII whitespace may follow ``</answer>`` (generation often ends with a newline); any other
  trailing text, a second tag or a missing tag makes the completion malformed;
- the tag and what follows it fit in ``MAX_TAIL_CHARS`` characters (a bound on the tag's padding, not
  on the reasoning).

Reward: 1.0 well-formed and correct, ``FORMAT_REWARD`` well-formed but wrong, 0.0 malformed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FORMAT_REWARD = 0.1
MAX_ANSWER_DIGITS = 6
# Room for the tags, a sign, the digits and a little whitespace; longer tails are malformed.
MAX_TAIL_CHARS = 64

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
# [0-9], not \d: \d matches unicode digits such as '٣', which int() would happily accept.
# Only ever matched against the tail (at most MAX_TAIL_CHARS characters), never the reasoning.
_TAIL = re.compile(rf"<answer>[ \t\r\n]*(-?[0-9]{{1,{MAX_ANSWER_DIGITS}}})[ \t\r\n]*</answer>[ \t\r\n]*")


def parse_answer(completion: str) -> int | None:
    """The integer in the completion's final answer tag, or None when the completion is malformed."""
    if not isinstance(completion, str):
        return None
    # Linear in len(completion): one find for the first opening tag, one bounded find for a closing tag
    # before it; the regex only sees the tail, whose length is checked first.
    start = completion.find(OPEN_TAG)
    if start < 0 or len(completion) - start > MAX_TAIL_CHARS:
        return None  # no tag, or a tail too long (which includes a second tag far after the first)
    if completion.find(CLOSE_TAG, 0, start) >= 0:
        return None  # a stray closing tag in the reasoning counts as a second tag
    # A second opening tag can only be in the tail; the tail regex refuses it.
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
