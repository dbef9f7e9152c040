import pytest

from copd_lab.config import ConfigError, ExperimentConfig
from copd_lab.config_io import RUN_DEFAULTS, build, dump_toml, load_config, to_dict


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert (cfg.grpo.group_size, cfg.grpo.clip_low, cfg.grpo.clip_high) == (8, 0.2, 0.28)
    assert cfg.grpo.kl_coef == 0.0 and cfg.grpo.temperature == 1.0
    assert cfg.copd.rl_steps / cfg.copd.opd_steps == 1.5
    assert cfg.copd.topology == "hub" and cfg.copd.hub == "text"
    assert cfg.metrics.topk == 10 and cfg.opd.estimator == "sampled"
    assert cfg.grpo.group_size * cfg.grpo.prompts_per_step >= 64


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('methods = ["copd"]\n[copd]\nrl_steps = 6\nstep_rates = {image = 0.5}\n')
    cfg = load_config(path, ["copd.opd_steps=4", "sim.lr=0.1", "copd.topology=all_pairs", "domains=['text','image']"])
    assert cfg.methods == ("copd",) and cfg.copd.rl_steps == 6 and cfg.copd.opd_steps == 4
    assert cfg.copd.step_rates == {"image": 0.5} and cfg.sim.lr == 0.1 and cfg.copd.topology == "all_pairs"
    assert isinstance(cfg.domains, tuple)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["copd.beta_per_edge={'text<-image' = 0.5}", "merge.weights=[1.0, 2.0, 1.0]"])
    path = tmp_path / "back.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg
    assert build(ExperimentConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, words", [
    ("copd.rl_steps=-1", ["copd.rl_steps", "-1", ">= 0"]),
    ("grpo.group_size=1", ["grpo.group_size", "1", ">= 2"]),
    ("grpo.aggregation='mean'", ["grpo.aggregation", "'mean'", "token_mean"]),
    ("opd.estimator='kl'", ["opd.estimator", "'kl'", "sampled"]),
    ("merge.method='magic'", ["merge.method", "'magic'", "ties"]),
    ("copd.hub='audio'", ["copd.hub", "'audio'", "text"]),
    ("copd.step_rates={image = 2.0}", ["step_rates.image", "2.0", "(0, 1]"]),
    ("copd.edges=['text->image']", ["edges", "text->image", "student<-teacher"]),
    ("sim.lr='fast'", ["sim.lr", "'fast'", "a number"]),
    ("sim.lr=0", ["sim.lr", "0", "> 0"]),
    ("seeds=0", ["seeds", "0", "[1, 1000]"]),
    ("grpo.bogus=1", ["grpo.bogus", "allowed fields", "group_size"]),
    ("merge.weights=[1.0]", ["merge.weights", "one weight per domain"]),
    ("sim.shared_skill=1.5", ["sim.shared_skill", "1.5", "[0, 1]"]),
    # values that used to pass and then crash, or start a run that could not finish
    ("sim.lr=inf", ["sim.lr", "inf", "a finite number"]),
    ("vlm.lr=nan", ["vlm.lr", "nan", "a finite number"]),
    ("copd.beta_per_edge={'text<-image' = inf}", ["copd.beta_per_edge.text<-image", "inf", "finite"]),
    ("merge.weights=[0, 0, 0]", ["merge.weights", "(0.0, 0.0, 0.0)", "at least one > 0"]),
    ("expert_steps=99999999999999", ["expert_steps", "99999999999999", "[1, 333,333]", "mixed RLVR"]),
    ("copd.cycles=99999999", ["copd.cycles", "99999999", "1,000,000 ticks"]),
    ("grpo.group_size=4096", ["grpo.group_size", "4096", "[2, 1024]"]),
    ("grpo.prompts_per_step=100000", ["grpo.prompts_per_step", "100000", "16384 rollouts"]),
    ("vlm.device='cuda:x'", ["vlm.device", "'cuda:x'", "cuda:N"]),
    ("vlm.max_new_tokens=10000000", ["vlm.max_new_tokens", "[1, 32,768]"]),
    ("domains=['text','a/b']", ["domains", "'a/b'", "letters, digits"]),
    ("seeds=5000", ["seeds", "5000", "[1, 1000]"]),
])
def test_bad_values_name_field_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_a_moved_field_says_where_it_went(tmp_path):
    """grpo.lr (the simulator's Adam lr) is sim.lr now: an old TOML file or --set names the new place, in one line."""
    moved = "grpo.lr is not allowed: it moved to sim.lr (the simulator's Adam lr; the VLM world's is vlm.lr)"
    path = tmp_path / "old.toml"
    path.write_text("[grpo]\ngroup_size = 4\nlr = 0.05\n")
    for args in [(path, []), (None, ["grpo.lr=0.05"])]:
        with pytest.raises(ConfigError) as err:
            load_config(*args)
        assert str(err.value) == moved
    assert load_config(None, ["sim.lr=0.05"]).sim.lr == 0.05


def test_hub_is_checked_only_when_a_copd_method_runs():
    """A single-domain experts run needs no hub; a CoPD run over the same domain does."""
    cfg = load_config(None, ["domains=['image']", "methods=['base','experts']"])
    assert cfg.domains == ("image",)
    with pytest.raises(ConfigError, match="copd.hub"):
        load_config(None, ["domains=['image']", "methods=['copd']"])


def test_defaults_merge_table_by_table(tmp_path):
    """A file's [metrics] table keeps the defaults it does not set; file and --set win over defaults."""
    path = tmp_path / "run.toml"
    path.write_text("[metrics]\ntopk = 5\n")
    cfg = load_config(path, [], defaults=RUN_DEFAULTS)
    assert (cfg.world, cfg.metrics.eval_samples, cfg.metrics.topk) == ("vlm", 32, 5)
    cfg = load_config(path, ["metrics.eval_samples=4", "world='sim'"], defaults=RUN_DEFAULTS)
    assert (cfg.world, cfg.metrics.eval_samples, cfg.metrics.topk) == ("sim", 4, 5)
    assert load_config(None).metrics.eval_samples == 8  # the simulator's default is untouched


def test_bad_files_and_syntax(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("methods = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["copd.rl_steps"])


def test_topk_must_be_below_the_simulators_vocabulary():
    """With one style and no filler the simulator has 6 tokens: a top-10 overlap would be 1 for every pair."""
    small = ["sim.styles=1", "sim.filler=0"]
    with pytest.raises(ConfigError, match=r"metrics.topk = 10 is not allowed: an integer below the simulator's "
                                          r"vocabulary of 6 tokens"):
        load_config(None, small)
    assert load_config(None, small + ["metrics.topk=4"]).metrics.topk == 4
    assert load_config(None, small + ["world='vlm'"]).world == "vlm"  # checked against the model there
