"""The tiny VLMs' tokenizer: a Qwen2-style byte-level BPE trained on generated task-shaped text, with Qwen's
special and vision tokens, one token each for `<answer>` and `</answer>`, and a Qwen-style chat template."""

from __future__ import annotations

import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
# Plain added tokens (decoded, not skipped): one id each makes the answer format easy to learn.
ANSWER_TOKENS = ["<answer>", "</answer>"]

# Qwen2's pre-tokenizer split: single digits, letters with one leading non-letter, punctuation runs.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2-VL's chat template without the default system message (it would cost ~8 tokens a prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words of the procedural text/image/video tasks (copd_lab.tasks: count, compare, add, order) and
# of completions; BPE merges them into whole tokens, anything else still encodes byte by byte.
TASK_WORDS = """
how many what which is are there in the a of and or to from with each all
count sum plus minus total larger smaller more fewer first last comes appears before after
image frame frames video show shows dot dots square squares shape move moves left right
leftmost rightmost top bottom colour color red green blue yellow cyan pink white black orange purple
does has have same answer think so because result number
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety
""".split()


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Prompts and completions shaped like the tasks', so merges cover their words and numbers.

    No random letter strings: merges of letter pairs would make letter-counting prompts harder.
    """
    out = []
    for _ in range(lines):
        words = " ".join(
            word.capitalize() if rng.random() < 0.2 else word
            for word in rng.choices(TASK_WORDS, k=rng.randint(3, 10))
        )
        options = " ".join(
            f"{i}={rng.choice(TASK_WORDS + [str(rng.randint(0, 99))])}" for i in range(rng.randint(2, 4))
        )
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = f"{words}? {options} {a} + {b} = {a + b}."
        out.append(f"{question}\nAnswer with <answer>N</answer>.\n<answer>{rng.randint(0, 99)}</answer>")
    return out


def build_tokenizer(vocab_size: int, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train a Qwen2-style byte-level BPE on the generated corpus and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ANSWER_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(random.Random(seed)), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",  # decoder-only generation pads on the left
        chat_template=CHAT_TEMPLATE,
    )
    wrapped.add_tokens(ANSWER_TOKENS)
    return wrapped
