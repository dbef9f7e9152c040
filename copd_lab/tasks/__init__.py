"""Text, image and video task suites that share skills (count, compare, add, order) and differ in
modality, their verifiers, and the registry through which users plug in suites of their own.
See ``base.py`` for the interface and an example."""

from copd_lab.tasks.base import FEATURES, MODALITIES, SKILLS, TaskSuite, Verifier, make_dataset
from copd_lab.tasks.registry import available_suites, build_suite, build_suites, register_suite
from copd_lab.tasks.verify import FORMAT_REWARD, answer_reward, is_correct, parse_answer

__all__ = [
    "FEATURES",
    "FORMAT_REWARD",
    "MODALITIES",
    "SKILLS",
    "TaskSuite",
    "Verifier",
    "answer_reward",
    "available_suites",
    "build_suite",
    "build_suites",
    "is_correct",
    "make_dataset",
    "parse_answer",
    "register_suite",
]
