"""The run's progress display (twm_fast.progress): its lines, their width, the ETA, the heartbeat."""
import io
import re

import pytest

from twm_fast.progress import Phase, RunEta, RunProgress, format_duration, format_number

LOSSES = {"obs/loss": 15123.4, "dyn/loss": 25.71, "dyn/z_ce": 20.1, "dyn/reward_nll": 0.312,
          "dyn/discount_nll": 0.0211, "ac/critic_loss": 0.1234, "ac/actor_loss": -0.03121}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def paper_phases():
    """The paper preset's phases with round estimates (seconds per unit)."""
    return [Phase("prefill", "prefill", 5_000, "env steps", 1e-3),
            Phase("pretrain_obs", "pretrain obs model", 18_750, "updates", 0.05),
            Phase("pretrain_dyn", "pretrain dynamics", 9_375, "updates", 0.02),
            Phase("pretrain_ac", "pretrain actor-critic", 2_917, "updates", 0.02),
            Phase("main", "main loop", 100_000, "env steps", 0.05, first=5_000),
            Phase("final_eval", "final evaluation", 100, "episodes", 0.0)]


def display(live=True, columns=80, heartbeat_s=60.0):
    clock, stream = Clock(), io.StringIO()
    progress = RunProgress(paper_phases(), live=live, heartbeat_s=heartbeat_s, stream=stream, columns=columns,
                           clock=clock, losses=lambda: dict(LOSSES), thread=False)
    return progress, clock, stream


def in_main_loop(progress, clock):
    """Mid-run of the paper preset: pretraining done, 60,000 env steps in, evaluated at 60,000."""
    for name in ("prefill", "pretrain_obs", "pretrain_dyn", "pretrain_ac"):
        progress.start_phase(name)
        phase = progress.phase(name)
        clock.now += phase.total * phase.estimate_s
        progress.advance(phase.total)
        progress.finish_phase()
    progress.update(train_steps=40_000, train_steps_total=69_853, eval_mean=-3.25, eval_env_step=60_000,
                    next_eval=65_000, episode_return=-12.0)
    progress.start_phase("main", 55_000)
    for _ in range(120):  # two minutes at 25 env steps/s
        clock.now += 1.0
        progress.advance(25)
        progress.update(train_steps=progress.state.train_steps + 18)
        progress.tick()


@pytest.mark.parametrize("columns", [80, 120, 57])
def test_live_lines_hold_every_field_within_the_width(columns):
    progress, clock, _ = display(columns=columns)
    in_main_loop(progress, clock)
    lines = progress.lines(columns)
    assert all(len(line) <= columns - 1 for line in lines), [(len(line), line) for line in lines]
    text = "\n".join(lines)
    assert lines[0].startswith("[5/6] main loop  58,000/100,000 env steps")
    assert "run ETA " in lines[0] and "?" not in lines[0]
    if columns >= 80:
        assert "▕" in lines[0] and lines[0].count("█") + lines[0].count("░") >= 8
        for field in ("18 train steps/s (42,160/69,853)", "episode return -12", "eval -3.25 at 60,000, next 65,000",
                      "losses: obs model 1.51e4, dynamics 25.7", "critic 0.123", "actor -0.0312"):
            assert field in text, (field, text)
    if columns >= 120:
        assert "dynamics 25.7 (z 20.1, reward 0.312, discount 0.0211)" in text
        assert len(lines) == 3


def test_bar_grows_with_the_terminal():
    progress, clock, _ = display()
    in_main_loop(progress, clock)
    narrow, wide = progress.lines(80)[0], progress.lines(160)[0]
    assert wide.count("█") + wide.count("░") > narrow.count("█") + narrow.count("░")


def test_live_block_is_redrawn_in_place_and_events_stay_above_it():
    progress, clock, stream = display()
    in_main_loop(progress, clock)
    progress.message("eval at env step 65,000: mean return 1.00")
    progress.close()
    out = stream.getvalue()
    # Every redraw moves up to the block's first line and clears below; the event line stays.
    assert "\x1b[J" in out and re.search(r"\x1b\[\d+A", out)
    assert "[4/6] pretrain actor-critic done: 2,917 updates in 58s" in out
    assert "eval at env step 65,000: mean return 1.00\n" in out
    assert out.endswith("\n")


def test_heartbeat_lines_carry_the_same_fields():
    progress, clock, stream = display(live=False, heartbeat_s=30.0)
    in_main_loop(progress, clock)
    lines = [line for line in stream.getvalue().splitlines() if "[5/6] main loop" in line and "done" not in line]
    # One line when the phase starts, then one every 30 s of its two minutes (no control characters).
    assert len(lines) == 1 + 4, lines
    assert "\x1b" not in stream.getvalue()
    last = lines[-1]
    for field in ("+", "[5/6] main loop 58,000/100,000 env steps (56%)", "run ETA", "18 train steps/s",
                  "eval -3.25 at 60,000, next 65,000", "episode return -12", "losses: obs model 1.51e4",
                  "dynamics 25.7 (z 20.1", "critic 0.123", "actor -0.0312"):
        assert field in last, (field, last)


def test_eta_is_the_remaining_units_at_the_measured_rate_plus_scaled_estimates():
    clock = Clock()
    phases = [Phase("a", "a", 100, "updates", 1.0), Phase("b", "b", 50, "updates", 2.0)]
    eta = RunEta(phases, window_s=300.0)
    eta.start(phases[0], clock.now)
    for _ in range(40):                  # measured: 0.5 updates/s, twice as slow as estimated
        clock.now += 1.0
        phases[0].done += 0.5
        eta.sample(clock.now)
    phases[0].done = int(phases[0].done)
    # a: 80 left at 0.5/s; b: 50 x 2 s estimated, scaled by measured/estimated time = 40 / 20 = 2.
    assert eta.remaining(clock.now) == pytest.approx(80 / 0.5 + 50 * 2.0 * 2.0, rel=1e-6)


def test_eta_holds_steady_through_evaluation_pauses():
    """A main loop that pauses 30 s for an evaluation after every 100 s of stepping: the predicted end
    time stays within a few percent of the truth (6,200), where a rate over the last seconds would
    swing between -23% (while stepping) and never (while paused)."""
    clock = Clock()
    phases = [Phase("main", "main loop", 40_000, "env steps", 0.1)]
    eta = RunEta(phases)
    eta.start(phases[0], clock.now)
    ends = []
    for second in range(1, 1800):
        clock.now += 1.0
        if second % 130 < 100:
            phases[0].done += 10
        eta.sample(clock.now)
        if second > 400:
            ends.append(clock.now + eta.remaining(clock.now))
    assert 0.94 * 6200 < min(ends) and max(ends) < 1.06 * 6200, (min(ends), max(ends))


def test_before_the_window_fills_the_rate_since_the_phase_began_counts():
    """A phase slower than its estimate, 3 s in: the ETA follows its progress, not the spent estimate."""
    clock = Clock()
    phases = [Phase("main", "main loop", 100, "env steps", 0.01)]
    eta = RunEta(phases)
    eta.start(phases[0], clock.now)
    clock.now += 3.0
    phases[0].done = 10
    assert eta.remaining(clock.now) == pytest.approx(90 * 0.3)


def test_an_unmeasured_phase_counts_its_estimate_less_the_time_spent():
    clock = Clock()
    phases = [Phase("final_eval", "final evaluation", 100, "episodes", 0.5)]
    eta = RunEta(phases)
    eta.start(phases[0], clock.now)
    clock.now += 20.0
    assert eta.remaining(clock.now) == pytest.approx(30.0)  # no progress counted: estimate 50 s - 20 s


def test_a_resumed_run_counts_the_phases_before_its_own_as_done():
    progress, clock, _ = display(live=False)
    progress.start_phase("main", 90_000)
    # 10,000 env steps at the estimate (0.05 s) and 100 episodes with no estimate yet: nothing else.
    assert progress.eta.remaining(clock.now) == pytest.approx(10_000 * 0.05)


def test_short_numbers():
    assert [format_duration(s) for s in (3, 200, 7500, 3 * 86400 + 4 * 3600, None)] == [
        "3s", "3m20s", "2h05m", "3d04h", "?"]
    assert [format_number(x) for x in (15123.4, 25.71, -0.03121, 1e-7)] == ["1.51e4", "25.7", "-0.0312", "1e-7"]
