"""The verifier: unit cases for each format rule, and property-based fuzzing against a reference parser."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copd_lab.tasks import FORMAT_REWARD, answer_reward, is_correct, parse_answer
from copd_lab.tasks.verify import MAX_ANSWER_DIGITS, MAX_TAIL_CHARS

ROW = {"answer": "3"}
REWARDS = {0.0, FORMAT_REWARD, 1.0}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_parse(completion: str) -> int | None:
    """The format rules of verify.py written out with string splitting instead of a regex."""
    if completion.count("<answer>") != 1 or completion.count("</answer>") != 1:
        return None
    _reasoning, rest = completion.split("<answer>")  # the reasoning may be of any length
    if len(rest) + len("<answer>") > MAX_TAIL_CHARS:
        return None
    if "</answer>" not in rest:
        return None
    inner, tail = rest.split("</answer>")
    if tail.strip(" \t\r\n"):
        return None
    inner = inner.strip(" \t\r\n")
    digits = inner[1:] if inner.startswith("-") else inner
    if not 1 <= len(digits) <= MAX_ANSWER_DIGITS or any(c not in "0123456789" for c in digits):
        return None
    return int(inner)


@pytest.mark.parametrize(
    "completion, value",
    [
        ("<answer>3</answer>", 3),
        ("two plus one is three. <answer>3</answer>", 3),
        ("<answer>3</answer>\n", 3),  # trailing ASCII whitespace is allowed
        ("<answer> 3 </answer>", 3),  # so is whitespace around the number, inside the tag
        ("<answer>\n3\t</answer>", 3),
        ("<answer>-4</answer>", -4),
        ("<answer>007</answer>", 7),
        ("<answer>123456</answer>", 123456),
        ("<answer>3\r\n</answer>", 3),  # \r is whitespace too (CRLF line ends)
        ("<answer>\r\n3\r\n</answer>\r\n", 3),
        ("<answer>\r3\r</answer>", 3),
        ("x" * 400 + "<answer>3</answer>", 3),  # reasoning of any length is allowed
        ("x" * 401 + "<answer>3</answer>", 3),
        ("step\r\n" * 10_000 + "<answer>3</answer>", 3),
        ("", None),
        ("3", None),
        ("the answer is 3", None),
        ("<answer></answer>", None),
        ("<answer>3</answer><answer>4</answer>", None),
        ("<answer>3</answer> <answer>3</answer>", None),
        ("</answer><answer>3</answer>", None),
        ("<answer>3</answer> so 3", None),  # garbage after the tag
        ("<answer>3</answer>.", None),
        ("<answer>3.0</answer>", None),
        ("<answer>+3</answer>", None),
        ("<answer>3 4</answer>", None),
        ("<answer>three</answer>", None),
        ("<answer>1234567</answer>", None),  # more than six digits
        ("<answer>\u0663</answer>", None),  # ARABIC-INDIC DIGIT THREE: int() would accept it
        ("<answer>\u00a03</answer>", None),  # unicode no-break space
        ("<answer>3\u2028</answer>", None),  # unicode line separator
        ("<answer>3\x0b</answer>", None),  # vertical tab: not one of the four allowed
        ("<answer>3\x0c</answer>", None),  # form feed
        ("<answer>+3\r\n</answer>", None),
        ("<answer>3.0\r\n</answer>", None),
        ("<Answer>3</Answer>", None),
        ("<answer>3", None),
        ("3</answer>", None),
        ("x" * 10_000 + "</answer><answer>3</answer>", None),  # a stray closing tag deep in the reasoning
        ("x" * 10_000 + "<answer>3</answer>" + "x" * 10_000 + "<answer>3</answer>", None),
        ("<answer>" + " " * 100 + "3</answer>", None),  # tail too long
        ("<answer>3</answer>" + "\n" * 100, None),
    ],
)
def test_parse_answer_cases(completion, value):
    assert parse_answer(completion) == value
    assert reference_parse(completion) == value


def test_rewards():
    assert answer_reward("<answer>3</answer>", ROW) == 1.0
    assert answer_reward("<answer>4</answer>", ROW) == FORMAT_REWARD == 0.1
    assert answer_reward("<answer>3</answer><answer>4</answer>", ROW) == 0.0
    assert answer_reward("3", ROW) == 0.0
    assert is_correct("<answer> 3 </answer>", ROW) and not is_correct("<answer>4</answer>", ROW)


@pytest.mark.parametrize("junk", [None, 3, b"<answer>3</answer>", ["<answer>3</answer>"]])
def test_non_strings_are_malformed(junk):
    assert parse_answer(junk) is None
    assert answer_reward(junk, ROW) == 0.0


@pytest.mark.parametrize("length", [400, 5_000, 200_000])
def test_long_well_formed_reasoning_is_judged_on_its_answer(length):
    """A real VLM's chain of thought runs to thousands of tokens; its length alone never zeroes it."""
    line = "Count the red blocks: one, two, three.\n"
    reasoning = (line * (length // len(line) + 1))[:length]
    assert len(reasoning) == length
    assert answer_reward(reasoning + "<answer>3</answer>", ROW) == 1.0
    assert answer_reward(reasoning + "<answer>4</answer>", ROW) == FORMAT_REWARD
    assert answer_reward(reasoning + "<answer>\r\n3\r\n</answer>\r\n", ROW) == 1.0
    assert answer_reward(reasoning, ROW) == 0.0


def test_huge_strings_are_judged_in_linear_time():
    assert answer_reward("a" * 10_000_000 + "<answer>3</answer>", ROW) == 1.0
    assert answer_reward("a" * 10_000_000, ROW) == 0.0
    assert answer_reward("<answer>3</answer>" * 1_000_000, ROW) == 0.0
    assert answer_reward("</answer>" + "a" * 10_000_000 + "<answer>3</answer>", ROW) == 0.0
    # Whitespace and digits are what a backtracking regex over the reasoning would choke on.
    assert answer_reward(" 3\n" * 3_000_000 + "<answer>3</answer>", ROW) == 1.0
    assert answer_reward("<" * 3_000_000 + "<answer>3</answer>", ROW) == 1.0


def _check(completion: str) -> float:
    """Never raises, gives one of the three rewards, and agrees with the reference parser."""
    reward = answer_reward(completion, ROW)
    assert reward in REWARDS
    expected = reference_parse(completion)
    assert parse_answer(completion) == expected
    if expected is None:
        assert reward == 0.0
    return reward


@FUZZ
@given(st.text())
def test_fuzz_arbitrary_text(completion):
    _check(completion)


PIECES = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["<answer>", "</answer>", "<answer>3</answer>", "3", "-", " ", "\n", "\r", "\x00", "\u0663"]
    ),
    st.integers(-(10**8), 10**8).map(str),
)


@FUZZ
@given(st.lists(PIECES, max_size=12).map("".join))
def test_fuzz_text_with_injected_tags(completion):
    _check(completion)


@FUZZ
@given(st.text(max_size=30), st.integers(0, 100_000), st.sampled_from(["", "<answer>3</answer>", "<answer>"]))
def test_fuzz_long_strings(chunk, repeats, suffix):
    _check(chunk * repeats + suffix)


def _no_tag(text: str) -> bool:
    return "<answer>" not in text and "</answer>" not in text


# Reasoning as drawn text, and as a drawn chunk repeated many times (long strings, cheaply).
REASONING = st.text(max_size=400).filter(_no_tag)
LONG_REASONING = st.one_of(
    st.text(max_size=20_000),
    st.builds(lambda chunk, repeats: chunk * repeats, st.text(min_size=1, max_size=40), st.integers(1, 5_000)),
).filter(_no_tag)
SPACE = st.text(alphabet=" \t\r\n", max_size=3)


@FUZZ
@given(REASONING, SPACE, SPACE, st.text(alphabet=" \t\r\n", max_size=5), st.integers(0, 999_999))
def test_fuzz_well_formed(reasoning, before, after, trailing, value):
    completion = f"{reasoning}<answer>{before}{value}{after}</answer>{trailing}"
    row = {"answer": str(value)}
    assert answer_reward(completion, row) == 1.0
    assert answer_reward(completion, {"answer": str(value + 1)}) == FORMAT_REWARD


@FUZZ
@given(LONG_REASONING, st.integers(-999_999, 999_999))
def test_fuzz_any_reasoning_without_a_tag_is_allowed(reasoning, value):
    assert parse_answer(reasoning + "<answer>" + str(value) + "</answer>") == value


@FUZZ
@given(REASONING, st.integers(0, 9), st.text(min_size=1, max_size=20).filter(lambda s: s.strip(" \t\r\n")))
def test_fuzz_garbage_after_the_tag_is_malformed(reasoning, value, garbage):
    assert answer_reward(f"{reasoning}<answer>{value}</answer>{garbage}", {"answer": str(value)}) == 0.0


@FUZZ
@given(REASONING, st.text(min_size=1, max_size=12), st.integers(0, 9))
def test_fuzz_non_integer_answer_is_malformed(reasoning, inner, value):
    if reference_parse(f"<answer>{inner}</answer>") is None:
        assert answer_reward(f"{reasoning}<answer>{inner}</answer>", {"answer": str(value)}) == 0.0
