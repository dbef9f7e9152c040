"""Random streams: one torch.Generator per (run seed, name), so a method's draws are its own.

A world draws a request's randomness (prompts, sampling noise) from the stream its request names, the
method it belongs to. A method's rollouts then do not depend on which other methods share the run, nor
on the order in which the trainer hands the world their requests. A name may carry its own seed
(`seeded(name, seed)`), so that seeds run side by side in one world draw what they draw alone.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), the same in every process (Python's hash() of a str is salted)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded(name: str, seed: int) -> str:
    """The name of stream `name` of run seed `seed`, whatever seed the Streams holding it has."""
    return f"{name}@{seed}"


class Streams:
    """Generators by name, each created on first use from (seed, name); saved and restored whole, or one
    seed's `seeded` streams at a time."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def __call__(self, name: str) -> torch.Generator:
        generator = self.generators.get(name)
        if generator is None:
            base, at, tag = name.rpartition("@")
            seed, base = (int(tag), base) if at else (self.seed, name)
            generator = self.generators[name] = torch.Generator().manual_seed(stream_seed(seed, base))
        return generator

    def state_dict(self, seed: int | None = None) -> dict:
        """Every stream's state; or, given `seed`, the state of that seed's `seeded` streams, as a Streams of
        that seed would hold them."""
        if seed is None:
            return {"seed": self.seed, "states": {name: g.get_state() for name, g in self.generators.items()}}
        tag = seeded("", seed)
        return {"seed": seed, "states": {name.removesuffix(tag): g.get_state() for name, g in self.generators.items()
                                         if name.endswith(tag)}}

    def load_state_dict(self, state: dict, seed: int | None = None) -> None:
        """Restore the streams of `state`; given `seed`, as that seed's `seeded` streams."""
        for name, value in state["states"].items():
            self(name if seed is None else seeded(name, seed)).set_state(value)

    @classmethod
    def from_state_dict(cls, state: dict) -> Streams:
        streams = cls(state["seed"])
        streams.load_state_dict(state)
        return streams
