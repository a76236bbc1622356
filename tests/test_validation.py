"""The configuration's validation layer: every field declares its values, every refusal is one line
naming the field, the value and what it may be, the rules between fields hold, and what the rules
accept works (a model builds and trains)."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twm_fast.config import PRESETS, Config, make_config
from twm_fast.validation import Choice, ConfigError, Flag, Integer, Pattern, Real, Sizes, rule_of

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def test_every_field_declares_a_rule_its_default_follows():
    for f in FIELDS.values():
        rule = rule_of(f)  # TypeError for a field added without setting(default, Rule(...))
        assert rule.check(f.default) == f.default, f.name
        assert rule.describe(), f.name
    for name in PRESETS:
        make_config(name)  # every preset passes the field rules and the rules between fields


# The values of the issue (#12) that ended in a traceback or were accepted, each refused in one line
# that names the field and the value and says what it may be.
REFUSED = [
    ("env_steps=inf", "env_steps='inf': must be an integer in [1, 1,000,000,000]"),
    ("env_steps=1e30", "env_steps='1e30': must be an integer in [1, "),
    ("obs_hidden_dims=-5", "obs_hidden_dims='-5': must be 0 to 16 comma-separated integers in [1, 65,536]"),
    ("dyn_z_head_dims=0", "dyn_z_head_dims='0': must be 0 to 16 comma-separated integers"),
    ("imagine_horizon=0", "imagine_horizon='0': must be an integer in [1, "),
    ("imagine_batch_size=0", "imagine_batch_size='0': must be an integer in [1, "),
    ("pretrain_obs_batch_size=0", "pretrain_obs_batch_size='0': must be an integer in [1, "),
    ("frame_stack=0", "frame_stack='0': must be an integer in [1, 16]"),
    ("z_categoricals=0", "z_categoricals='0': must be an integer in [1, "),
    ("dyn_num_heads=-2", "dyn_num_heads='-2': must be an integer in [1, "),
    ("discount=nan", "discount='nan': must be a number in [0, 1]"),
    ("discount=2", "discount='2': must be a number in [0, 1]"),
    ("dyn_num_layers=0", "dyn_num_layers='0': must be an integer in [1, "),
    ("pretrain_obs_fraction=-1", "pretrain_obs_fraction='-1': must be a number in [0, 1]"),
    ("pretrain_budget=-1e4", "pretrain_budget='-1e4': must be a number in [0, "),
    ("time_limit=0", "time_limit='0': must be an integer in [1, "),
    ("dyn_lr=inf", "dyn_lr='inf': must be a number in (0, 1]"),
    ("device=", "device='': must be auto, cpu, cuda or cuda:N"),
    ("game=", "game='': must be a game name"),
    ("z_categories=1", "z_categories='1': must be an integer in [2, "),
    ("episodic_lives=maybe", "episodic_lives='maybe': must be true or false"),
    ("env_steps=2.5", "env_steps='2.5': must be an integer"),
    ("seed=-1", "seed='-1': must be an integer in [0, 4,294,967,295]"),
    ("replay_temperature=0", "replay_temperature='0': must be a number in (0, inf] (inf: uniform)"),
    ("dyn_dropout=1", "dyn_dropout='1': must be a number in [0, 1)"),
    ("imagine_dtype=bfloat61", "imagine_dtype='bfloat61': must be one of float32, bfloat16 (default float32); "
                               "did you mean bfloat16"),
    ("frame_size=84", "frame_size='84': must be one of 64"),
    ("actor_hidden_dims=1,,2", "actor_hidden_dims='1,,2': must be 0 to 16 comma-separated integers"),
    # Between fields.
    ("prefill_steps=7000", "env_steps=7000 must be more than prefill_steps=7000"),
    ("prefill_steps=9", "prefill_steps=9 must exceed wm_sequence_length + 1 (9)"),
    ("imagine_horizon=999", "prefill_steps=1000 must exceed imagine_horizon + 1 (1000)"),
    ("wm_batch_size=994", "wm_batch_size=994 exceeds the 993 window starts of the prefill data"),
    ("pretrain_obs_fraction=0.8", "pretrain_obs_fraction + pretrain_dyn_fraction = 1.1 must be <= 1"),
    ("pretrain_ac_fraction=0.8", "the pretraining fractions (obs + dyn + ac) add up to 1.7, more than the published "
                                 "0.6 + 0.3 + 0.7 = 1.6"),
    ("imagine_batch_size=129", "imagine_batch_size=129 exceeds the 16 x 8 start candidates"),
    ("dyn_num_heads=3", "dyn_num_heads x dyn_head_dim = 3 x 32 must equal dyn_embed_dim=64"),
    ("total_budget=6e4", "total_budget=60000 must exceed pretrain_budget=60000"),
    # Names.
    ("imagine_batch_sise=3", "unknown config field 'imagine_batch_sise'; did you mean imagine_batch_size"),
    ("=3", "unknown config field ''; valid names: "),
]


@pytest.mark.parametrize("override,message", REFUSED)
def test_bad_values_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        make_config("quick", [override])
    text = str(error.value)
    assert message in text and "\n" not in text, text


def test_a_refusal_quotes_the_value_the_override_replaces():
    """The preset's value, where it sets the field (quick: 7,000 env steps), else the field's default."""
    with pytest.raises(ConfigError, match=r"\(default 7000\)"):
        make_config("quick", ["env_steps=inf"])
    with pytest.raises(ConfigError, match=r"\(default 100000\)"):
        make_config("paper", ["env_steps=inf"])


def test_a_pretraining_budget_beyond_a_million_updates_is_refused():
    """A budget the field rules accept may still ask for more pretraining updates than a start can lay
    out (twm_fast/agent/pretraining.py enumerates them); the estimate the rule uses is the schedule's."""
    from twm_fast.agent import pretraining

    for preset in ("paper", "quick"):
        config = make_config(preset)
        exact = {phase: p.updates for phase, p in pretraining.plan(config).items()}
        for phase, estimate in config._pretrain_updates_estimate().items():
            assert abs(estimate - exact[phase]) <= 0.01 * exact[phase] + 2, (preset, phase, estimate, exact)
    with pytest.raises(ConfigError, match=r"pretraining phase obs would take about 24,000,000 updates, more than "
                                          r"1,000,000 .*raise pretrain_obs_batch_size"):
        make_config("quick", ["pretrain_budget=1e10", "total_budget=1e13"])


def test_odd_width_is_refused():
    with pytest.raises(ConfigError, match=r"dyn_embed_dim=65 must be even"):
        make_config("quick", ["dyn_embed_dim=65", "dyn_num_heads=1", "dyn_head_dim=65"])


def test_a_field_given_twice_is_refused():
    with pytest.raises(ConfigError, match=r"seed is given twice \('1' and 2\); give it once"):
        make_config("quick", ["seed=1"], seed=2)


@pytest.mark.parametrize("override,field,value", [
    ("env_steps=1e4", "env_steps", 10_000),
    ("env_steps=8_000", "env_steps", 8_000),
    ("replay_temperature=inf", "replay_temperature", math.inf),
    ("total_budget=2000000", "total_budget", 2e6),
    ("episodic_lives=off", "episodic_lives", False),
    ("actor_hidden_dims=()", "actor_hidden_dims", ()),
    ("actor_hidden_dims=64,", "actor_hidden_dims", (64,)),
    ("actor_hidden_dims=[32, 16]", "actor_hidden_dims", (32, 16)),
    ("frame_size=64", "frame_size", 64),
    ("device=cuda:1", "device", "cuda:1"),
    ("pretrain_ac_fraction=0.1", "pretrain_ac_fraction", 0.1),
])
def test_overrides_parse_to_the_fields_type(override, field, value):
    config = make_config("quick", [override])
    assert getattr(config, field) == value and type(getattr(config, field)) is type(value)


def test_saved_configs_are_validated(tmp_path):
    saved = make_config("quick").to_dict()
    # As config.json stores them: lists for widths, an int where a float field held a whole number.
    restored = Config.from_dict(json.loads(json.dumps({**saved, "total_budget": 1980000})))
    assert restored == make_config("quick") and restored.actor_hidden_dims == (128, 128)
    assert isinstance(restored.total_budget, float)
    for bad, message in [({"discount": float("nan")}, "discount=nan"), ({"env_steps": "7000"}, "env_steps='7000'"),
                         ({"episodic_lives": 1}, "episodic_lives=1: must be true or false"),
                         ({"actor_hidden_dims": [128, -1]}, "actor_hidden_dims=[128, -1]"),
                         ({"imagine_horizon": None}, "imagine_horizon=None")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
            Config.from_dict({**saved, **bad})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        Config.from_dict([1, 2])


# ---- The rules themselves -------------------------------------------------------------------------------
def test_rules_refuse_what_does_not_fit():
    assert Integer(1, 5).parse("5e0") == 5 and Integer(1, 5).check(np.int64(3)) == 3
    for bad in (True, 2.5, math.inf, math.nan, "3", 0, 6, None):
        with pytest.raises(ValueError):
            Integer(1, 5).check(bad)
    assert Real(0, math.inf).check(math.inf) == math.inf
    for bad in (math.nan, math.inf, -1e-300, False, "1"):
        with pytest.raises(ValueError):
            Real(0, 1e9).check(bad)
    with pytest.raises(ValueError):
        Real(0, 1, open_lo=True).check(0.0)
    assert Flag().parse("Yes") is True and Flag().parse("0") is False
    with pytest.raises(ValueError):
        Flag().check(1)
    assert Choice(64).parse("64") == 64
    with pytest.raises(ValueError):
        Choice("a", "b").check(True)
    assert Sizes(1, 9).parse(" ( 3 , 4 ) ") == (3, 4) and Sizes(1, 9).parse("") == ()
    with pytest.raises(ValueError):
        Sizes(1, 9, max_len=2).parse("1,2,3")
    with pytest.raises(ValueError):
        Pattern("[a-z]+", "letters", max_len=3).check("abcd")


# ---- What the rules accept works ---------------------------------------------------------------------------
@st.composite
def small_models(draw):
    """Structures anywhere in the rules' ranges but small: the model fields, the window and imagination
    sizes and the frame stack, with the rules between fields satisfied."""
    heads, head_dim = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4, 8]))
    widths = st.lists(st.integers(1, 12), max_size=2).map(tuple)
    B, L = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return dict(
        frame_stack=draw(st.integers(1, 5)), z_categoricals=draw(st.integers(1, 4)),
        z_categories=draw(st.integers(2, 5)), obs_channels=draw(st.integers(1, 4)), obs_hidden_dims=draw(widths),
        memory_length=draw(st.integers(1, 4)), dyn_num_layers=draw(st.integers(1, 2)), dyn_num_heads=heads,
        dyn_head_dim=head_dim, dyn_embed_dim=heads * head_dim, dyn_feedforward_dim=draw(st.integers(1, 16)),
        dyn_z_head_dims=draw(widths), dyn_reward_head_dims=draw(widths), dyn_discount_head_dims=draw(widths),
        actor_hidden_dims=draw(widths), critic_hidden_dims=draw(widths), wm_batch_size=B, wm_sequence_length=L,
        imagine_batch_size=draw(st.integers(1, B * L)), imagine_horizon=draw(st.integers(1, 4)),
        dyn_dropout=draw(st.sampled_from([0.0, 0.5])), discount=draw(st.sampled_from([0.0, 0.99, 1.0])),
        prefill_steps=20, env_steps=40)


@settings(max_examples=8, deadline=None)
@given(small_models())
def test_any_accepted_model_builds_and_trains(fields):
    """A training step (world model, imagination, actor-critic) at any structure the rules accept: a
    rule too loose would let a run start that crashes at its first update."""
    from twm_fast.agent.agent import Agent
    from twm_fast.testing import random_batch

    config = make_config("quick", **fields)
    torch.manual_seed(0)
    agent = Agent(config, 3)
    batch = random_batch(config)
    batch["obs"] = torch.randint(0, 256, (config.wm_batch_size, config.wm_sequence_length + 2, config.frame_stack,
                                          64, 64), dtype=torch.uint8)
    restart = torch.randint(0, 256, (config.imagine_batch_size, config.frame_stack, 64, 64), dtype=torch.uint8)
    metrics = agent.train_step(batch, restart)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert agent.act(restart[:1]).shape == (1,)


def test_a_run_with_another_frame_stack_collects_and_trains(tmp_path):
    """frame_stack is a field: the trainer's replay stores that many frames per observation."""
    from twm_fast.testing import tiny_config
    from twm_fast.train import Trainer

    config = tiny_config(game="catch", frame_stack=2, replay_backend="reference", time_limit=50)
    trainer = Trainer(config, tmp_path, torch.device("cpu"), show_progress=False)
    trainer.prefill()
    trainer.train_step()
    assert trainer.replay.frame_stack == 2 and trainer.counters["train_steps"] == 1
