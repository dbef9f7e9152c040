"""copd_lab.math.merge against per-element loop references on tiny state dicts, plus validation."""

from __future__ import annotations

import pytest
import torch

from copd_lab.math.merge import MERGE_METHODS, merge_state_dicts

SHAPES = {"layer.weight": (3, 4), "layer.bias": (4,), "scalar": ()}


def _state(seed: int, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g).to(dtype) for name, shape in SHAPES.items()}


def _setup(n_experts: int = 3):
    base = _state(100)
    experts = []
    for seed in range(n_experts):
        noise = _state(seed)
        experts.append({name: base[name] + noise[name] for name in base})
    return experts, base


def _flat(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.flatten()]


def _per_element(experts, base, fn):
    """Apply fn(list of expert values, base value, index in the flat tensor, name) elementwise."""
    out = {}
    for name, ref in experts[0].items():
        values = [_flat(e[name]) for e in experts]
        theta_0 = _flat(base[name]) if base is not None else [0.0] * ref.numel()
        merged = [fn([v[i] for v in values], theta_0[i], i, name) for i in range(ref.numel())]
        out[name] = torch.tensor(merged, dtype=torch.float64).reshape(ref.shape)
    return out


def _assert_dicts_close(got, want):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype or got[name].dtype == torch.float64
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- methods against loops


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 5.0]])
def test_average(weights):
    experts, _ = _setup()
    w = [1 / 3] * 3 if weights is None else [x / sum(weights) for x in weights]
    want = _per_element(
        experts, None, lambda vals, b, i, n: sum(wk * v for wk, v in zip(w, vals, strict=True))
    )
    _assert_dicts_close(merge_state_dicts(experts, weights=weights), want)


def test_average_of_one_expert_is_identity():
    experts, _ = _setup(1)
    _assert_dicts_close(merge_state_dicts(experts), experts[0])


@pytest.mark.parametrize("weights,scale", [(None, 1.0), ([0.5, 1.0, -0.25], 0.7)])
def test_task_arithmetic(weights, scale):
    experts, base = _setup()
    w = [1 / 3] * 3 if weights is None else weights
    def merge_entry(vals, b, i, name):
        return b + scale * sum(wk * (v - b) for wk, v in zip(w, vals, strict=True))

    want = _per_element(experts, base, merge_entry)
    got = merge_state_dicts(experts, base, "task_arithmetic", weights=weights, scale=scale)
    _assert_dicts_close(got, want)
    if weights is None and scale == 1.0:  # uniform task arithmetic from a shared base is the average
        _assert_dicts_close(got, merge_state_dicts(experts))


def _ties_reference(experts, base, weights, density, scale):
    """TIES written out per element: trim (per tensor), elect, disjoint mean."""
    taus = {name: [[v - b for v, b in zip(_flat(e[name]), _flat(base[name]), strict=True)] for e in experts]
            for name in base}
    kept = {}
    for name, per_expert in taus.items():
        numel = len(per_expert[0])
        n_keep = max(1, round(density * numel))
        kept[name] = []
        for tau in per_expert:
            # rank by magnitude, ties to the lower flat index
            order = sorted(range(numel), key=lambda i: (-abs(tau[i]), i))[:n_keep]
            kept[name].append([tau[i] if i in order else 0.0 for i in range(numel)])

    def merge_entry(vals, b, i, name):
        trimmed = [kept[name][k][i] for k in range(len(experts))]
        total = sum(w * t for w, t in zip(weights, trimmed, strict=True))
        elected = (total > 0) - (total < 0)
        agree = [k for k, t in enumerate(trimmed) if t != 0 and ((t > 0) - (t < 0)) == elected]
        if not agree:
            return b
        mean = sum(weights[k] * trimmed[k] for k in agree) / sum(weights[k] for k in agree)
        return b + scale * mean

    return _per_element(experts, base, merge_entry)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
def test_ties(density, weights):
    experts, base = _setup()
    w = [1.0] * 3 if weights is None else weights
    got = merge_state_dicts(experts, base, "ties", weights=weights, density=density, scale=0.9)
    _assert_dicts_close(got, _ties_reference(experts, base, w, density, 0.9))


def test_ties_sign_election_and_magnitude_ties():
    base = {"w": torch.zeros(4, dtype=torch.float64)}
    experts = [
        {"w": torch.tensor([3.0, -1.0, 1.0, 1.0], dtype=torch.float64)},
        {"w": torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)},
        {"w": torch.tensor([-1.0, 2.0, 0.0, 0.0], dtype=torch.float64)},
    ]
    # density 1: entry 0 elects + (3 − 1 − 1 > 0), keeps only expert 0: 3; entry 1 elects 0 -> 0;
    # entries 2, 3 elect +, mean of the two 1s
    got = merge_state_dicts(experts, base, "ties", density=1.0)
    torch.testing.assert_close(got["w"], torch.tensor([3.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    # density 0.5 keeps 2 of 4 per expert, magnitude ties to the lower index: [3, -1, 0, 0],
    # [-1, -1, 0, 0], [-1, 2, 0, 0]; entry 1 sums to 0 (no sign), entries 2, 3 are trimmed everywhere
    got = merge_state_dicts(experts, base, "ties", density=0.5)
    torch.testing.assert_close(got["w"], _ties_reference(experts, base, [1.0] * 3, 0.5, 1.0)["w"])
    torch.testing.assert_close(got["w"], torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("density", [0.3, 1.0])
def test_dare(density):
    experts, base = _setup()
    weights, scale, seed = [0.2, 0.3, 0.5], 1.1, 7
    # replay the documented draw order: floating parameters in sorted name order, then experts in order
    g = torch.Generator().manual_seed(seed)
    draws = {name: [_flat(torch.rand(SHAPES[name], generator=g)) for _ in experts] for name in sorted(SHAPES)}

    def merge_entry(vals, b, i, name):
        total = 0.0
        for k, v in enumerate(vals):
            if draws[name][k][i] < density:
                total += weights[k] * (v - b) / density
        return b + scale * total

    want = _per_element(experts, base, merge_entry)
    got = merge_state_dicts(experts, base, "dare", weights=weights, density=density, scale=scale, seed=seed)
    _assert_dicts_close(got, want)
    if density == 1.0:  # nothing dropped: task arithmetic
        ta = merge_state_dicts(experts, base, "task_arithmetic", weights=weights, scale=scale)
        _assert_dicts_close(got, ta)


def test_dare_is_seeded_and_unbiased():
    torch.manual_seed(0)
    base = {"w": torch.zeros(20000)}
    experts = [{"w": torch.ones(20000)}]
    a = merge_state_dicts(experts, base, "dare", density=0.25, seed=3)
    assert torch.equal(a["w"], merge_state_dicts(experts, base, "dare", density=0.25, seed=3)["w"])
    assert not torch.equal(a["w"], merge_state_dicts(experts, base, "dare", density=0.25, seed=4)["w"])
    assert set(a["w"].unique().tolist()) == {0.0, 4.0}
    assert a["w"].mean().item() == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------- dtypes and validation


@pytest.mark.parametrize("method", MERGE_METHODS)
def test_dtype_preserved_and_int_buffers_copied(method):
    base = {k: v.to(torch.bfloat16) for k, v in _state(100).items()}
    base["steps"] = torch.tensor(5)
    experts = []
    for seed in range(2):
        expert = {k: v.to(torch.bfloat16) for k, v in _state(seed).items()}
        expert["steps"] = torch.tensor(5 + seed)
        experts.append(expert)
    got = merge_state_dicts(experts, base, method)
    assert list(got) == list(experts[0])
    for name, tensor in got.items():
        assert tensor.dtype == experts[0][name].dtype and tensor.shape == experts[0][name].shape
    assert got["steps"].item() == 5
    if method == "average":
        want = (experts[0]["layer.weight"].float() + experts[1]["layer.weight"].float()) / 2
        torch.testing.assert_close(got["layer.weight"], want.to(torch.bfloat16))


def test_validation_errors_name_the_argument():
    experts, base = _setup(2)
    with pytest.raises(ValueError, match="experts=\\[\\]"):
        merge_state_dicts([])
    with pytest.raises(ValueError, match="method='fisher'.*average"):
        merge_state_dicts(experts, base, "fisher")
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"density={bad}.*\\(0, 1\\]"):
            merge_state_dicts(experts, base, "ties", density=bad)
    with pytest.raises(ValueError, match="weights has 3 entries but experts has 2"):
        merge_state_dicts(experts, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        merge_state_dicts(experts, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="> 0 for 'ties'"):
        merge_state_dicts(experts, base, "ties", weights=[1.0, 0.0])
    for method in ("task_arithmetic", "ties", "dare"):
        with pytest.raises(ValueError, match=f"method='{method}' needs base"):
            merge_state_dicts(experts, None, method)
    missing = {k: v for k, v in experts[1].items() if k != "scalar"}
    with pytest.raises(ValueError, match="expert 1 keys differ.*missing \\['scalar'\\]"):
        merge_state_dicts([experts[0], missing])
    with pytest.raises(ValueError, match="base keys differ.*extra \\['extra'\\]"):
        merge_state_dicts(experts, {**base, "extra": torch.zeros(1)}, "task_arithmetic")
    reshaped = {**experts[1], "layer.weight": experts[1]["layer.weight"].reshape(4, 3)}
    with pytest.raises(ValueError, match="shape of 'layer.weight' in expert 1 is \\(4, 3\\)"):
        merge_state_dicts([experts[0], reshaped])


def test_merge_does_not_modify_inputs():
    experts, base = _setup()
    before = [{k: v.clone() for k, v in state.items()} for state in [*experts, base]]
    for method in MERGE_METHODS:
        merge_state_dicts(experts, base, method)
    for state, saved in zip([*experts, base], before, strict=True):
        assert all(torch.equal(state[k], saved[k]) for k in saved)
