"""The cost model of a run (twm_fast.estimate): README and the CPU refusal quote the same function, the
calibration reproduces its measurements, and the multiply-add counts match the models."""
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from twm_fast import estimate, train
from twm_fast.config import make_config
from twm_fast.estimate import (
    CALIBRATED_ON,
    DEVELOPMENT_MACHINE,
    describe_hours,
    dynamics_step_macs,
    dynamics_token_macs,
    obs_model_macs,
    run_hours,
    unit_seconds,
)
from twm_fast.models.dynamics import DynamicsModel
from twm_fast.models.obs_model import ObservationModel
from twm_fast.testing import random_z

README = Path(__file__).resolve().parents[1] / "README.md"


def paper_figure() -> str:
    return describe_hours(run_hours(make_config("paper"), DEVELOPMENT_MACHINE))


def test_readme_quotes_the_estimate_of_the_paper_preset():
    assert paper_figure() in README.read_text(), paper_figure()


def test_cpu_refusal_quotes_the_same_estimate(tmp_path, monkeypatch, capsys):
    """The refusal on a CPU, on the machine README names, says README's figure (and leaves no run dir)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU would run the paper preset")
    monkeypatch.setattr(estimate.Machine, "probe", classmethod(lambda cls, device, *a, **k: DEVELOPMENT_MACHINE))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's threads
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"would take {paper_figure()} on {DEVELOPMENT_MACHINE.name}" in err and "--preset quick" in err
    assert not out.exists()


@pytest.mark.parametrize("preset", sorted(CALIBRATED_ON))
def test_calibration_reproduces_its_measurements(preset):
    model = unit_seconds(make_config(preset), DEVELOPMENT_MACHINE)
    for kind, measured in CALIBRATED_ON[preset].items():
        assert model[kind] == pytest.approx(measured, rel=0.05), (preset, kind)


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_multiply_adds_match_the_models(preset):
    """The counts the model is built on, against torch's FLOP counter on the real modules."""
    c = make_config(preset)
    om = ObservationModel(c)
    obs = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        logits = om.encode(obs)
    encoder = counter.get_total_flops() / 2 / 2                 # 2 flops per multiply-add, 2 frames
    with FlopCounterMode(display=False) as counter:
        om.decode(om.sample(logits, "sample")[0])
    decoder = counter.get_total_flops() / 2 / 2
    assert (encoder, decoder) == obs_model_macs(c)

    dynamics = DynamicsModel(c, num_actions=6).eval()
    steps = c.wm_sequence_length + 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        h = dynamics(random_z(2, steps, c), torch.zeros(2, steps, dtype=torch.long), torch.zeros(2, steps - 1),
                     torch.zeros(2, steps - 1, dtype=torch.bool))
        dynamics.predict(h)
    tokens = 3 * steps - 1
    modelled = tokens * dynamics_token_macs(c, tokens) + steps * dynamics_step_macs(c)
    # The model leaves out the position projections and the reward embedding: a few percent.
    assert counter.get_total_flops() / 2 / 2 == pytest.approx(modelled, rel=0.1)


def test_probing_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    estimate.Machine.probe(torch.device("cpu"), 0.01)
    assert torch.equal(torch.rand(4), expected)


def test_describe_hours():
    assert [describe_hours(h) for h in (0.05, 5.4, 2000)] == ["about 3 minutes", "about 5 hours",
                                                              "about 83 days (2,000 h)"]
