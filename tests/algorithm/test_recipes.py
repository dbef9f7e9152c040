import pytest

from copd_lab.algorithm.recipes import METHODS, active_count, build_recipe, build_recipes, is_active
from copd_lab.algorithm.slots import BASE, SlotKey
from copd_lab.config import ConfigError
from copd_lab.config_io import load_config


def cfg(*overrides):
    return load_config(None, list(overrides))


def test_budgets_match_the_paper():
    c = cfg()
    experts, mixed, copd = (build_recipe(m, c) for m in ("experts", "mixed", "copd"))
    assert experts.steps_per_branch() == {"text": 200, "image": 200, "video": 200}
    assert mixed.steps_per_branch() == {"mixed": 600}  # the sum of the experts' steps
    assert copd.steps_per_branch() == {"text": 200, "image": 200, "video": 200}
    phases = [s.name for s in copd.stages]
    assert phases[:2] == ["phase1", "phase2"] and len(phases) == 2 * c.copd.cycles
    assert copd.stages[0].steps == 12 and copd.stages[1].steps == 8 and not copd.stages[0].edges
    branches = (("copd[text]", "text"), ("copd[image]", "image"), ("copd[video]", "video"))  # just before the merge
    assert copd.merge is not None and copd.outputs == (("copd", "merged"), *branches)


def test_copd_phase_two_edges_hub_and_spoke():
    edges = build_recipe("copd", cfg()).stages[1].edges
    assert {(e.student, e.teacher, e.domain) for e in edges} == {
        ("text", "image", "image"), ("image", "text", "text"), ("text", "video", "video"), ("video", "text", "text")}
    assert all(e.live and e.beta == 1.0 for e in edges)


def test_static_opd_mopd_and_ablations():
    c = cfg("copd.beta_per_edge={'image<-text' = 0.5}")
    static = build_recipe("static_opd:image->text", c)
    (edge,) = static.stages[0].edges
    assert (edge.student, edge.teacher, edge.domain, edge.live) == ("text", SlotKey("experts", "image"), "image", False)
    assert static.branch("text").init == SlotKey("experts", "text") and static.requires == ("experts",)
    mopd = build_recipe("mopd", c)
    assert {e.domain: e.teacher for e in mopd.stages[0].edges} == {d: SlotKey("experts", d) for d in c.domains}
    assert mopd.branch("student").init == BASE and not mopd.stages[0].rlvr
    dropped = build_recipe("copd_drop:text<-image", c)
    assert ("text", "image") not in {(e.student, e.teacher) for e in dropped.stages[1].edges}
    assert {e.label: e.beta for e in build_recipe("copd", c).stages[1].edges}["image<-text"] == 0.5
    assert build_recipe("copd_no_merge", c).merge is None
    assert not any(e.live for e in build_recipe("copd_frozen", c).stages[1].edges)
    fixed = build_recipe("copd_fixed_experts", c)  # CoPD's schedule, graded by the finished experts
    assert [(e.student, e.teacher, e.domain, e.live) for e in fixed.stages[1].edges] == [
        (e.student, SlotKey("experts", e.teacher), e.teacher, False) for e in build_recipe("copd", c).stages[1].edges]
    assert fixed.requires == ("experts",) and [s.name for s in fixed.stages] == [s.name for s in
                                                                               build_recipe("copd", c).stages]
    adaptive = build_recipe("copd", cfg("copd.adaptive_threshold=0.6"))
    assert len(adaptive.stages) == 1 and adaptive.stages[0].adaptive_threshold == 0.6


def test_prerequisite_experts_are_added_once():
    names = [r.name for r in build_recipes(cfg("methods=['mopd', 'copd']"))]
    assert names[0] == "experts" and sorted(names) == ["copd", "experts", "mopd"]
    assert build_recipes(cfg("methods=['mopd']"))[0].outputs == ()  # a prerequisite is not reported


def test_step_rates_spread_steps_evenly():
    assert [is_active(i, 0.5) for i in range(6)] == [False, True, False, True, False, True]
    assert active_count(200, 1.0) == 200 and active_count(200, 0.5) == 100 and active_count(10, 0.3) == 3
    recipe = build_recipe("copd", cfg("copd.step_rates={video = 0.5}"))
    assert recipe.steps_per_branch() == {"text": 200, "image": 200, "video": 100}


@pytest.mark.parametrize("method", ["wat", "static_opd:image", "static_opd:audio->text", "static_opd:text->text",
                                    "copd_drop:image<-video"])
def test_bad_methods(method):
    with pytest.raises(ConfigError, match="not allowed"):
        build_recipe(method, cfg())


# each listed method's recipe and its budget at the defaults (200 expert steps, 100 distill steps, K = 3)
BUDGETS = {
    "base": None,
    "experts": ("experts", {"text": 200, "image": 200, "video": 200}),
    "mixed": ("mixed", {"mixed": 600}),
    "static_opd:image->text": ("static_opd:image->text", {"text": 100}),
    "mopd": ("mopd", {"student": 100}),
    "copd": ("copd", {"text": 200, "image": 200, "video": 200}),
    "copd_no_merge": ("copd_no_merge", {"text": 200, "image": 200, "video": 200}),
    "copd_drop:text<-image": ("copd_drop:text<-image", {"text": 200, "image": 200, "video": 200}),
    "copd_frozen": ("copd_frozen", {"text": 200, "image": 200, "video": 200}),
    "copd_fixed_experts": ("copd_fixed_experts", {"text": 200, "image": 200, "video": 200}),
}


def test_every_listed_method_builds_with_its_budget():
    listed = [name.replace("<teacher>-><student>", "image->text").replace("<student><-<teacher>[,...]", "text<-image")
              for name in METHODS]
    assert listed == list(BUDGETS)  # a new method needs its budget here
    for method, expected in BUDGETS.items():
        recipe = build_recipe(method, cfg())
        if expected is None:
            assert recipe is None
            continue
        name, steps = expected
        assert recipe.name == name and recipe.steps_per_branch() == steps, method
        merged = recipe.merge is not None
        assert merged == (method in ("copd", "copd_drop:text<-image", "copd_frozen", "copd_fixed_experts")), method
        assert recipe.requires == (("experts",) if method in ("static_opd:image->text", "mopd", "copd_fixed_experts")
                                   else ()), method
