"""How long a run takes: a cost model of each phase (SPEC 7), calibrated on a measured machine.

A run is counted in units: env steps of the prefill, updates of the three pretraining phases, and
env steps of the main loop, each carrying its share of the training steps. A unit costs a fixed
overhead (Python, dispatch, small ops) plus its multiply-adds (convolutions, linear layers,
attention: `unit_macs`) at the machine's float32 matmul rate times an efficiency. Overheads and
efficiencies were measured on the development machine at the quick and the paper preset's sizes
(`python -m twm_fast.estimate --measure`); a machine's matmul rate is probed in a fraction of a
second (`Machine.probe`), so the model carries over to another CPU roughly, and to a GPU only as
a first guess, which the progress display replaces with measured rates as the run goes.

Evaluations are left out (their episodes' lengths depend on the agent); the progress display
measures them during the run.

The refusal of a slow CPU run and README's figure for the paper preset both come from
`run_hours` (tests/test_estimate.py checks that README quotes it).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass

import torch

from twm_fast.agent import pretraining
from twm_fast.config import Config, make_config


@dataclass(frozen=True)
class Machine:
    """A machine's speed as the cost model sees it."""

    name: str
    matmul_flops: float   # float32 512 x 512 matmuls (2048 x 2048 on a GPU), flop/s

    @classmethod
    def probe(cls, device: torch.device, seconds: float = 0.3, clock=time.perf_counter) -> Machine:
        """Time square matmuls on `device` for about `seconds` of `clock` (at torch's thread count).
        Wall time (the default) gives the speed under the machine's current load; with one thread,
        `time.process_time` gives the speed of a core to itself, whatever else runs."""
        n = 2048 if device.type == "cuda" else 512
        # Its own generator: probing must not move the global RNG a seeded run draws from.
        a = torch.randn(n, n, device=device, generator=torch.Generator(device).manual_seed(0))
        (a @ a).sum().item()  # warm-up
        reps, start = 0, clock()
        while clock() - start < seconds:
            (a @ a).sum().item()
            reps += 1
        rate = 2 * n ** 3 * reps / (clock() - start)
        threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
        return cls(f"this {device.type.upper()}{threads}", rate)


# The development machine (a 2-core AMD EPYC VM, 24 GiB, PyTorch 2.13 CPU build): its float32 matmul
# rate with one thread in CPU time, i.e. with a core to itself (89 to 95 GFLOP/s measured under load).
# README's estimate for the paper preset is for this machine.
DEVELOPMENT_MACHINE = Machine("the 2-core development machine (1 thread, a core to itself)", 92e9)

# Measured CPU seconds per unit on DEVELOPMENT_MACHINE with one thread (`python -m twm_fast.estimate
# --preset P --measure`, the models of commit 3ee0dfa; medians of 10 runs for quick, 1 run for paper,
# each after a warm-up, while other work kept the load at 6 to 11).
CALIBRATED_ON = {
    "quick": {"obs_update": 0.258, "dyn_update": 0.0162, "ac_update": 0.0102, "train_step": 0.188, "act": 0.00109},
    "paper": {"obs_update": 19.7, "dyn_update": 4.46, "ac_update": 2.36, "train_step": 46.9, "act": 0.0049},
}


def _calibrate() -> dict[str, tuple[float, float]]:
    """Per unit kind (overhead seconds, efficiency): the line through the two measured presets of
    seconds against multiply-adds, at DEVELOPMENT_MACHINE's matmul rate."""
    small, large = (make_config(name) for name in ("quick", "paper"))
    small_macs, large_macs = unit_macs(small), unit_macs(large)
    calibration = {}
    for kind in CALIBRATED_ON["quick"]:
        at_rate = [2 * m / DEVELOPMENT_MACHINE.matmul_flops for m in (small_macs[kind], large_macs[kind])]
        slowdown = (CALIBRATED_ON["paper"][kind] - CALIBRATED_ON["quick"][kind]) / (at_rate[1] - at_rate[0])
        calibration[kind] = (max(CALIBRATED_ON["quick"][kind] - slowdown * at_rate[0], 0.0), 1 / slowdown)
    return calibration


# Seconds per env step of the game itself (and its replay write): measured, not modelled.
ENV_STEP_S = {"catch": 3.3e-5, "atari": 1.0e-3}


def _mlp_macs(in_dim: int, hidden: tuple, out_dim: int) -> int:
    return sum(a * b for a, b in itertools.pairwise([in_dim, *hidden, out_dim]))


def obs_model_macs(c: Config) -> tuple[int, int]:
    """Multiply-adds of one frame stack through the encoder and through the decoder (SPEC 2)."""
    ch, z_dim = c.obs_channels, c.z_categoricals * c.z_categories
    encoder, side = 0, c.frame_size
    channels = [c.frame_stack, ch, 2 * ch, 4 * ch, 8 * ch]
    for c_in, c_out in itertools.pairwise(channels):          # kernel 4, stride 2, no padding
        side = (side - 4) // 2 + 1
        encoder += c_in * c_out * 16 * side * side
    encoder += _mlp_macs(8 * ch * side * side, c.obs_hidden_dims, z_dim)
    decoder, side = z_dim * 16 * ch, 1
    for c_in, c_out, k in zip([16 * ch, 4 * ch, 2 * ch, ch], [4 * ch, 2 * ch, ch, c.frame_stack], [5, 5, 6, 6]):
        decoder += c_in * c_out * k * k * side * side           # each input pixel scatters a k x k patch
        side = (side - 1) * 2 + k
    return encoder, decoder


def dynamics_token_macs(c: Config, keys: int) -> int:
    """Multiply-adds of one token through the transformer, attending to `keys` keys (SPEC 3)."""
    d, inner = c.dyn_embed_dim, c.dyn_num_heads * c.dyn_head_dim
    projections = 3 * d * inner + inner * d + 2 * d * c.dyn_feedforward_dim
    attention = 3 * inner * keys   # content and position scores, then the weighted values
    return c.dyn_num_layers * (projections + attention)


def dynamics_step_macs(c: Config) -> int:
    """Multiply-adds per time step outside the transformer: the z embedding and the three heads."""
    z_dim, d = c.z_categoricals * c.z_categories, c.dyn_embed_dim
    return (z_dim * d + _mlp_macs(d, c.dyn_z_head_dims, z_dim) + _mlp_macs(d, c.dyn_reward_head_dims, 1)
            + _mlp_macs(d, c.dyn_discount_head_dims, 1))


def unit_macs(c: Config, num_actions: int = 18) -> dict[str, float]:
    """Multiply-adds of each unit kind; a backward pass counts twice its forward pass."""
    z_dim = c.z_categoricals * c.z_categories
    encoder, decoder = obs_model_macs(c)
    actor = _mlp_macs(z_dim, c.actor_hidden_dims, num_actions)
    critic = _mlp_macs(z_dim, c.critic_hidden_dims, 1)
    B, L, M, H = c.wm_batch_size, c.wm_sequence_length, c.imagine_batch_size, c.imagine_horizon
    window_tokens = 3 * (L + 1) - 1
    window = window_tokens * dynamics_token_macs(c, window_tokens) + (L + 1) * dynamics_step_macs(c)
    slots = 3 * (c.memory_length + 1) + 2
    rollout = ((3 * H + 2) * dynamics_token_macs(c, slots) + (H + 1) * (dynamics_step_macs(c) + actor)
               + encoder)                                    # + the restart pool's encoding
    ac_update = critic * (H + 1) + 3 * (critic + actor) * H
    return {
        "obs_update": 3 * c.pretrain_obs_batch_size * (encoder + decoder),
        "dyn_update": 3 * B * window,
        "ac_update": M * (critic * (H + 1) + 3 * (critic + actor) * (H + 1)),
        "train_step": 3 * B * L * (encoder + decoder) + 2 * B * encoder + 3 * B * window + M * (rollout + ac_update),
        "act": encoder + actor,
    }


# Per unit kind: (overhead seconds on DEVELOPMENT_MACHINE, efficiency = achieved / matmul flop/s).
CALIBRATION = _calibrate()


def unit_seconds(c: Config, machine: Machine) -> dict[str, float]:
    """Seconds per unit kind on `machine` (the cost model). A faster machine runs the overhead
    faster too, in proportion to its matmul rate."""
    speed = DEVELOPMENT_MACHINE.matmul_flops / machine.matmul_flops
    seconds = {}
    for kind, macs in unit_macs(c).items():
        overhead, efficiency = CALIBRATION[kind]
        seconds[kind] = overhead * speed + 2 * macs / (machine.matmul_flops * efficiency)
    return seconds


def phase_seconds(c: Config, machine: Machine) -> dict[str, float]:
    """Seconds per unit of each phase the progress display counts (prefill and main: per env step)."""
    unit = unit_seconds(c, machine)
    env = ENV_STEP_S["catch" if c.game == "catch" else "atari"]
    main_steps = c.env_steps - c.prefill_steps
    train_per_env_step = c.num_train_steps / main_steps if main_steps > 0 else 0.0
    return {"prefill": env, "pretrain_obs": unit["obs_update"], "pretrain_dyn": unit["dyn_update"],
            "pretrain_ac": unit["ac_update"], "main": env + unit["act"] + train_per_env_step * unit["train_step"]}


def phase_units(c: Config) -> dict[str, int]:
    """Units of each phase: env steps, updates, env steps."""
    pre = {phase: p.updates for phase, p in pretraining.plan(c).items()}
    return {"prefill": c.prefill_steps, "pretrain_obs": pre["obs"], "pretrain_dyn": pre["dyn"],
            "pretrain_ac": pre["ac"], "main": c.env_steps - c.prefill_steps}


def run_hours(c: Config, machine: Machine) -> float:
    """The whole run's estimated wall time in hours (evaluations left out)."""
    per_unit = phase_seconds(c, machine)
    return sum(per_unit[k] * n for k, n in phase_units(c).items()) / 3600


def describe_hours(hours: float) -> str:
    """'about 40 days (960 h)', 'about 6 hours', 'about 5 minutes': the figure README and the refusal quote."""
    if hours >= 48:
        return f"about {hours / 24:.0f} days ({hours:,.0f} h)"
    if hours >= 2:
        return f"about {hours:.0f} hours"
    return f"about {max(hours * 60, 1):.0f} minutes"


# ---- Measuring the calibration ---------------------------------------------------------------------
def measure_units(c: Config, repeats: int = 3, num_actions: int = 18) -> dict[str, dict[str, float]]:
    """Per unit kind: the median CPU seconds of the real update at `c`'s sizes on the CPU, after a
    warm-up, with the matmul rate in CPU time and the efficiency that rate implies, overhead aside.
    With one thread, CPU time is the wall time of a core to itself: the figures hold on a loaded
    machine (the development machine is shared)."""
    from twm_fast.agent.agent import Agent
    from twm_fast.testing import random_batch, random_z

    torch.manual_seed(0)
    agent = Agent(c, num_actions)
    B, L, M, H = c.wm_batch_size, c.wm_sequence_length, c.imagine_batch_size, c.imagine_horizon
    frames = lambda n: torch.randint(0, 256, (n, c.frame_stack, 64, 64), dtype=torch.uint8)
    z, actions = random_z(B, L + 1, c), torch.randint(0, num_actions, (B, L + 1))
    rewards, no = torch.randn(B, L + 1).tanh(), torch.zeros(B, L + 1, dtype=torch.bool)
    target = torch.randn(B, L, c.z_categoricals, c.z_categories)
    ac_z, ac_rewards, ac_no = random_z(M, H + 1, c), torch.randn(M, H).tanh(), torch.zeros(M, H, dtype=torch.bool)
    batch, restart, obs, one = random_batch(c, num_actions), frames(M), frames(c.pretrain_obs_batch_size), frames(1)
    units = {
        "obs_update": lambda: agent.pretrain_obs_model(obs),
        "dyn_update": lambda: agent.pretrain_dynamics(z, actions, rewards, no, no, target),
        "ac_update": lambda: agent.pretrain_actor_critic(ac_z, ac_rewards, ac_no, ac_no),
        "train_step": lambda: agent.train_step(batch, restart),
        "act": lambda: agent.act(one),
    }
    macs = unit_macs(c, num_actions)
    measured = {}
    for kind, fn in units.items():
        fn()
        rate = Machine.probe(torch.device("cpu"), clock=time.process_time).matmul_flops
        times = []
        for _ in range(repeats if kind != "act" else 50 * repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        seconds = sorted(times)[len(times) // 2]
        measured[kind] = {"seconds": seconds, "probe_gflops": rate / 1e9,
                          "efficiency": 2 * macs[kind] / (seconds * rate), "min_s": min(times), "max_s": max(times)}
    return measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twm_fast.estimate",
                                description="Estimate a run's wall time on this machine (the cost model), "
                                            "or --measure its units for real.")
    p.add_argument("--preset", default="paper")
    p.add_argument("--game", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--measure", action="store_true", help="time the real updates here (minutes at paper size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", metavar="name=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        c = make_config(args.preset, args.overrides, **({"game": args.game} if args.game else {}))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    machine = Machine.probe(torch.device("cpu"))
    report = {"machine": machine.name, "cpu_time_matmul_gflops":
              Machine.probe(torch.device("cpu"), 1.0, time.process_time).matmul_flops / 1e9, "matmul_gflops": machine.matmul_flops / 1e9,
              "unit_gmacs": {k: v / 1e9 for k, v in unit_macs(c).items()},
              "model_unit_seconds": unit_seconds(c, machine), "phase_units": phase_units(c),
              "run": describe_hours(run_hours(c, machine))}
    if args.measure:
        report["measured_unit_seconds"] = measure_units(c, args.repeats)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
