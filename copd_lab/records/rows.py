"""Tidy metric rows (run, method, seed, step, branch, pair, metric, value), the book one seed keeps of them, and
their compact checkpoint form."""

from __future__ import annotations

import torch

ROW_COLUMNS = ("run", "method", "seed", "step", "branch", "pair", "metric", "value")


def pack_rows(rows: list[dict]) -> dict:
    """Tidy rows as a checkpoint stores them: numbers as tensors, strings as codes into a name list.

    Thousands of small dicts pickle slowly; a few tensors save in a blink and load back exactly.
    """
    packed: dict = {"seed": torch.tensor([r["seed"] for r in rows], dtype=torch.int64),
                    "step": torch.tensor([r["step"] for r in rows], dtype=torch.int64),
                    "value": torch.tensor([r["value"] for r in rows], dtype=torch.float64)}
    for col in ("run", "method", "branch", "pair", "metric"):
        values = [r[col] for r in rows]
        names = list(dict.fromkeys(values))
        code = {name: i for i, name in enumerate(names)}
        packed[col] = {"names": names, "codes": torch.tensor([code[v] for v in values], dtype=torch.int64)}
    return packed


def unpack_rows(packed: dict) -> list[dict]:
    """Tidy rows back from `pack_rows`."""
    columns = {col: (packed[col].tolist() if isinstance(packed[col], torch.Tensor)
                     else [packed[col]["names"][i] for i in packed[col]["codes"].tolist()]) for col in ROW_COLUMNS}
    return [dict(zip(ROW_COLUMNS, values)) for values in zip(*(columns[c] for c in ROW_COLUMNS))]


class SeedRows:
    """The rows one seed's run writes: measurement rows as they come; per-request training signals kept as tensors
    until drained (one sync, at checkpoints and at the end), in rows of their own so the row order does not depend
    on when that happens; and each branch's step and rollout counts, written at the end."""

    def __init__(self, run: str, seed: int, branches: dict[str, tuple[str, str]], rollouts_per_request: int,
                 pooled: dict[str, dict[int, str]] | None = None):
        """branches: each counted branch's key, as its checkpoint names it (copd_lab.algorithm.slots), -> its
        (method, branch). pooled: the keys of branches whose RL batches pool domains -> {domain index: name}: the
        share of their RL rollouts each domain got is logged at the end (prompt_share/<domain>)."""
        self.run, self.seed, self.rollouts_per_request = run, seed, rollouts_per_request
        self.rows: list[dict] = []
        self.signal_rows: list[dict] = []  # drained training signals: they follow self.rows
        self.pending: list[tuple[int, list[tuple[str, str, str]], torch.Tensor, torch.Tensor | None]] = []
        self.branches = dict(branches)
        self.key_of = {pair: key for key, pair in self.branches.items()}
        self.steps_done = dict.fromkeys(self.branches, 0)
        self.rollouts_done = dict.fromkeys(self.branches, 0)
        self.pooled = dict(pooled or {})
        self.domain_rollouts = {key: dict.fromkeys(names, 0) for key, names in self.pooled.items()}

    def count_step(self, method: str, branch: str) -> None:
        """One more gradient step of this branch."""
        self.steps_done[self.key_of[method, branch]] += 1

    def row(self, method: str, step: int, branch: str, pair: str, metric: str, value: float) -> dict:
        return dict(run=self.run, method=method, seed=self.seed, step=step, branch=branch, pair=pair, metric=metric,
                    value=value)

    def log(self, method: str, step: int, branch: str, pair: str, metric: str, value: float) -> None:
        self.rows.append(self.row(method, step, branch, pair, metric, value))

    def keep_signals(self, tick: int, owners: list[tuple[str, str, str]], signal: torch.Tensor,
                     per_domain: torch.Tensor | None = None) -> None:
        """A training step's signal per request (mean reward of a GRPO batch, reverse KL of an OPD batch), owned by
        (method, branch, edge), and its rollouts per domain [R, D] when a request pools domains; not yet synced."""
        self.pending.append((tick, owners, signal, per_domain))

    def drain(self) -> None:
        for tick, owners, signal, per_domain in self.pending:
            for row, (method, branch, edge) in enumerate(owners):
                key = self.key_of[method, branch]
                self.rollouts_done[key] += self.rollouts_per_request
                if key in self.pooled and not edge and per_domain is not None:  # its own RL batch
                    counts = self.domain_rollouts[key]
                    for d, n in zip(self.pooled[key], per_domain[row, list(self.pooled[key])].tolist()):
                        counts[d] += n
            for (method, branch, edge), value in zip(owners, signal.tolist()):
                self.signal_rows.append(self.row(method, tick, branch, edge,
                                                 "opd_reverse_kl" if edge else "train_reward", value))
        self.pending.clear()

    def flush(self) -> list[dict]:
        """Every row of the run: the measurements, then the training signals, then the counts."""
        self.drain()
        self.rows += self.signal_rows
        self.signal_rows = []
        for key, steps in self.steps_done.items():
            method, branch = self.branches[key]
            self.log(method, -1, branch, "", "steps", float(steps))
            self.log(method, -1, branch, "", "rollouts", float(self.rollouts_done[key]))
            counts = self.domain_rollouts.get(key, {})
            total = sum(counts.values())
            for d, name in self.pooled.get(key, {}).items():
                self.log(method, -1, branch, "", f"prompt_share/{name}", counts[d] / total if total else 0.0)
        return self.rows

    def state_dict(self) -> dict:
        self.drain()
        return {"steps_done": dict(self.steps_done), "rollouts_done": dict(self.rollouts_done),
                "domain_rollouts": {key: dict(c) for key, c in self.domain_rollouts.items()},
                "rows": pack_rows(self.rows), "signal_rows": pack_rows(self.signal_rows)}

    def load_state_dict(self, state: dict) -> None:
        self.steps_done, self.rollouts_done = dict(state["steps_done"]), dict(state["rollouts_done"])
        self.domain_rollouts = {key: dict(c) for key, c in state["domain_rollouts"].items()}
        self.rows, self.signal_rows = unpack_rows(state["rows"]), unpack_rows(state["signal_rows"])
