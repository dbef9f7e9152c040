"""Random streams: one torch.Generator per (run seed, name), so a method's draws are its own.

A world draws a request's randomness (prompts, sampling noise) from the stream its request names, the
method it belongs to. A method's rollouts then do not depend on which other methods share the run, nor
on the order in which the trainer hands the world their requests.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), the same in every process (Python's hash() of a str is salted)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Streams:
    """Generators by name, each created on first use from (seed, name); saved and restored whole."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def __call__(self, name: str) -> torch.Generator:
        generator = self.generators.get(name)
        if generator is None:
            generator = self.generators[name] = torch.Generator().manual_seed(stream_seed(self.seed, name))
        return generator

    def state_dict(self) -> dict:
        return {"seed": self.seed, "states": {name: g.get_state() for name, g in self.generators.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> Streams:
        streams = cls(state["seed"])
        for name, value in state["states"].items():
            streams(name).set_state(value)
        return streams
