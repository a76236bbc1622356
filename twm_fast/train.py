"""Train a TWM agent: `python -m twm_fast.train`.

The run (SPEC 7) reads as a short loop: prefill the replay with random play, pretrain the
observation model, the dynamics model and the actor-critic on that data, then alternate
collecting with the agent and training steps (world model, imagination, actor-critic), with
periodic evaluation and checkpoints. Every phase can be resumed from its last checkpoint.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from twm_fast import ops
from twm_fast.agent import pretraining
from twm_fast.agent.agent import Agent
from twm_fast.checkpoint import (
    CHECKPOINTS_DIR,
    CheckpointStore,
    Resumable,
    describe,
    run_directory_of,
    set_rng_state,
)
from twm_fast.cli import Once, Parser, path_text, printable, refuse, ruled
from twm_fast.config import PRESETS, Config, field_rule, make_config
from twm_fast.devices import resolve_device
from twm_fast.durable import RunLock, atomic_write, disk_full_message, is_disk_full
from twm_fast.envs import canonical_game, make_env
from twm_fast.envs.atari import import_gymnasium
from twm_fast.estimate import Machine, describe_hours, phase_seconds, run_hours
from twm_fast.evaluate import evaluate
from twm_fast.imagination.rollout import ImaginationStart
from twm_fast.install import install_problem
from twm_fast.interrupts import StopRequested, StopSignals
from twm_fast.metrics import MetricsLog
from twm_fast.nonfinite import NonFiniteGuard, RunFailed, nonfinite_modules
from twm_fast.precision import apply_matmul_precision, resolve_matmul_precision
from twm_fast.preflight import (
    RunSpace,
    available_memory,
    check_output_dir,
    check_space,
    describe_bytes,
    model_parameters,
    run_space,
)
from twm_fast.progress import Phase, RunProgress
from twm_fast.replay import make_replay
from twm_fast.validation import ConfigError, Real, shown
from twm_fast.visualize import save_eval_curve, save_imagined_rollouts, save_reconstructions

PHASES = ("prefill", "pretrain_obs", "pretrain_dyn", "pretrain_ac", "main", "done")
# Metrics of the main loop are averaged over this many training steps per record.
LOG_EVERY_TRAIN_STEPS = 50
# A CPU run whose estimate exceeds this many hours is refused unless --allow-slow is given.
CPU_REFUSE_HOURS = 12.0
# All cores' threads are used by default only where they run matmuls at least this much faster than
# one thread (two free cores: about 1.9x; two busy ones: below 1x).
MULTITHREAD_GAIN = 1.3


def choose_threads(requested: int, device: torch.device) -> tuple[int, str]:
    """torch's CPU threads for a run and why: `requested`, or for 0 what pays on this machine now.

    On the 2-core development machine, with its cores free, torch's default (one thread per core) ran
    the quick preset's training steps about 1.6 times as fast as one thread; with other processes
    keeping the cores busy, two threads ran them 4.5 times slower than one (3 to 11 times), each op
    waiting for a descheduled thread (README, Measured). So the default times matmuls with one thread
    and with all of them, in a fraction of a second, and takes all only where they are clearly faster."""
    if requested > 0:
        return requested, "as requested"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = int(os.environ.get("OMP_NUM_THREADS") or usable)  # torch's own default
    if cores <= 1:
        return 1, "one core"
    torch.set_num_threads(1)
    one = Machine.probe(torch.device("cpu"), 0.15).matmul_flops
    torch.set_num_threads(cores)
    every = Machine.probe(torch.device("cpu"), 0.15).matmul_flops
    if every >= MULTITHREAD_GAIN * one:
        return cores, f"{cores} ran matmuls {every / one:.1f}x as fast as one"
    return 1, f"{cores} ran matmuls at {every / one:.2f}x the speed of one: the cores are busy"


def check_installed(config: Config, device: torch.device) -> None:
    """ImportError (one line, with the command that fixes it) when the run needs a part this install lacks."""
    needed = ("twm_fast._replay",) if config.replay_backend == "cpp" else ()
    if device.type == "cuda" and ops.backend() != "torch":
        needed += ("twm_fast.kernels",)
    problem = install_problem(needed)
    if problem:
        raise ImportError(problem + (" (or train on the numpy replay: replay_backend=reference)"
                                     if "twm_fast._replay" in problem else ""))
    if config.game != "catch":
        import_gymnasium()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


class WindowReader:
    """Reads a training step's replay data, the windows and the observations that imagination restarts
    from, into preallocated host buffers (page-locked on a GPU) and copies them to the device
    asynchronously: the ~43 MB of a paper-size step (M = 800) then move at full PCIe speed, overlapped
    with the GPU's queued work, and nothing is allocated per step.

    The returned tensors stay valid until the next `read` (on a CPU they are the buffers themselves).
    """

    def __init__(self, replay, batch_size: int, length: int, restart_size: int, device: torch.device):
        self.replay, self.length, self.device = replay, length, device
        pin = device.type == "cuda"
        stack = (replay.frame_stack, *replay.frame_shape)
        shapes = {"obs": ((batch_size, length + 2, *stack), torch.uint8),
                  "actions": ((batch_size, length + 1), torch.int64),
                  "rewards": ((batch_size, length + 1), torch.float32),
                  "terminated": ((batch_size, length + 1), torch.bool),
                  "truncated": ((batch_size, length + 1), torch.bool),
                  "restart_obs": ((restart_size, *stack), torch.uint8)}
        self.host = {k: torch.empty(shape, dtype=dtype, pin_memory=pin) for k, (shape, dtype) in shapes.items()}
        self._out = {k: v.numpy() for k, v in self.host.items()}
        self._copied: torch.cuda.Event | None = None

    def read(self, starts: np.ndarray, restart_indices: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The windows at `starts` (as `read_windows`) and the observations at `restart_indices`."""
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copies must finish before we overwrite them
        windows = {k: v for k, v in self._out.items() if k != "restart_obs"}
        self.replay.read_windows(starts, self.length, out=windows)
        self.replay.read_obs(restart_indices, out=self._out["restart_obs"])
        batch = {k: v.to(self.device, non_blocking=True) for k, v in self.host.items()}
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        return batch, batch.pop("restart_obs")


class Trainer:
    """Owns the run directory, the env, the agent, the replay and the counters of one run.

    Everything the run decides follows from its counters and saved state, and signals act only at
    step boundaries (`signals.check()`), so a run resumed from any checkpoint takes the path it
    would have taken without stopping (README, Resuming)."""

    def __init__(self, config: Config, run_dir: Path, device: torch.device, resume: dict | None = None,
                 show_progress: bool = True, stop_after: int | None = None, live: bool | None = None,
                 heartbeat_s: float = 60.0, machine: Machine | None = None, signals: StopSignals | None = None):
        """resume: a verified checkpoint payload with its loaded replay (`CheckpointStore.find`).
        show_progress: the run's progress display (`twm_fast.progress`), live on a terminal (or as
        `live` says), else heartbeat lines every `heartbeat_s`; its estimates are for `machine`
        (probed here when not given). signals: the stop requests to honour at step boundaries
        (the command line installs them; by default none)."""
        self.config = config
        self.stop_after = stop_after
        self.run_dir = run_dir
        self.device = device
        self.signals = signals or StopSignals()
        self.store = CheckpointStore(run_dir / CHECKPOINTS_DIR, keep=config.keep_checkpoints)
        (run_dir / "images").mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(run_dir, resume=None if resume is None else resume["log"])
        self.guard = NonFiniteGuard(config.max_skipped_updates)
        seed_everything(config.seed)
        self.env = make_env(config.game, seed=config.seed, train=True, config=config)
        self.agent = Agent(config, self.env.num_actions).to(device)
        self._window_reader: WindowReader | None = None  # built at the first training step
        self.counters = {"phase": "prefill", "env_steps": 0, "train_steps": 0, "phase_updates": 0,
                         "episodes": 0, "last_eval": -1, "evals": [], "episode_return": 0.0,
                         "last_log": 0, "final_eval": None}
        if resume is None:
            self.replay = make_replay(config.replay_backend, capacity=config.replay_capacity,
                                      frame_shape=(config.frame_size, config.frame_size),
                                      frame_stack=config.frame_stack, temperature=config.replay_temperature,
                                      seed=config.seed)
            self.obs, _ = self.env.reset(seed=config.seed)
            self.replay.add_first(self.obs)
        else:
            self._restore(resume)
        if show_progress:
            if live is None:  # a terminal that can move its cursor; else (a log, a pipe) heartbeat lines
                live = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
            self.progress = RunProgress(self._progress_phases(machine or Machine.probe(device)), live=live,
                                        heartbeat_s=heartbeat_s, losses=self.log.running_means)
            evals = self.counters["evals"]
            self.progress.update(train_steps=self.counters["train_steps"], train_steps_total=config.num_train_steps,
                                 next_eval=self._next_eval(), **(self._eval_fields(evals[-1]) if evals else {}))
        else:
            self.progress = _NoProgress()

    def _progress_phases(self, machine: Machine) -> list[Phase]:
        """The display's phases: SPEC 7's schedule, then the final evaluation (timed once evaluations ran)."""
        c = self.config
        per_unit = phase_seconds(c, machine)
        pre = {phase: p.updates for phase, p in pretraining.plan(c).items()}
        return [Phase("prefill", "prefill", c.prefill_steps, "env steps", per_unit["prefill"]),
                Phase("pretrain_obs", "pretrain obs model", pre["obs"], "updates", per_unit["pretrain_obs"]),
                Phase("pretrain_dyn", "pretrain dynamics", pre["dyn"], "updates", per_unit["pretrain_dyn"]),
                Phase("pretrain_ac", "pretrain actor-critic", pre["ac"], "updates", per_unit["pretrain_ac"]),
                Phase("main", "main loop", c.env_steps, "env steps", per_unit["main"], first=c.prefill_steps),
                Phase("final_eval", "final evaluation", c.final_eval_episodes, "episodes", 0.0)]

    # ---- Checkpoints ----------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Commit a checkpoint of the run as it is (at a step boundary): `final` once the run is done,
        else the next periodic one. Weights that became non-finite are never saved: RunFailed."""
        if self.counters["env_steps"] != self.replay.total_steps:
            raise AssertionError("checkpoint between an env step and its replay entry")
        self._check_weights("checkpointing")
        extra = {"env": self.env.state_dict(), "obs": self.obs, "guard": self.guard.state_dict(),
                 "log": self.log.state_dict(self.counters["env_steps"])}
        return self.store.save(final=self.counters["phase"] == "done", agent=self.agent, replay=self.replay,
                               config=self.config, counters=self.counters, extra=extra)

    def last_checkpoint(self) -> str:
        """The newest committed checkpoint, for messages."""
        names = self.store.committed()
        return f"{self.store.directory / names[0]}.pt" if names else "none yet"

    def _check_weights(self, doing: str) -> None:
        bad = nonfinite_modules(self.agent)
        if bad:
            raise RunFailed(f"the weights of the {', '.join(bad)} became non-finite (at {self._where()}); "
                            f"stopped before {doing} them")

    def _where(self) -> str:
        c = self.counters
        if c["phase"] == "main":
            return f"train step {c['train_steps']:,} (env step {c['env_steps']:,})"
        return f"{c['phase']} update {c['phase_updates']:,}"

    def _restore(self, payload: dict) -> None:
        self.agent.load_state_dict(payload["agent"])
        for key, opt in self.agent.optimizers().items():
            opt.load_state_dict(payload["optimizers"][key])
        self.counters = dict(payload["counters"])
        self.replay = payload["replay"]
        set_rng_state(payload["rng"])
        self.guard.load_state_dict(payload["guard"])
        if payload["env"] is not None and self.env.state_dict() is not None:
            self.env.load_state_dict(payload["env"])  # Catch: the same future as without the stop
            self.obs = payload["obs"]
            return
        # The emulator cannot be saved: the interrupted episode ends here (as a truncation) and
        # a fresh one starts, so the replay never holds a transition the env did not produce.
        self.obs, _ = self.env.reset(seed=self.config.seed + 104729 * (self.counters["env_steps"] + 1))
        self.replay.restart_episode(self.obs)
        self.counters["episode_return"] = 0.0

    # ---- Acting in the real env -------------------------------------------------------------------
    def env_step(self, action: int) -> None:
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.counters["episode_return"] += reward
        if terminated or truncated:
            self.log.write(self.counters["env_steps"] + 1, {"train/episode_return": self.counters["episode_return"]})
            self.progress.update(episode_return=self.counters["episode_return"])
            self.counters["episode_return"] = 0.0
            self.counters["episodes"] += 1
            next_obs, _ = self.env.reset()
        self.replay.add(action, math.tanh(reward), terminated, truncated, next_obs)
        self.obs = next_obs
        self.counters["env_steps"] += 1
        if self.stop_after is not None and self.counters["env_steps"] >= self.stop_after:
            raise StopRun

    def policy_action(self) -> int:
        obs = torch.as_tensor(self.obs[None], device=self.device)
        return int(self.agent.act(obs)[0])

    # ---- Phases ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.config
        try:
            if self.counters["phase"] == "prefill":
                self.progress.start_phase("prefill", self.counters["env_steps"])
                self.prefill()
                self._next_phase()
            if self.counters["phase"] == "pretrain_obs":
                self.progress.start_phase("pretrain_obs", self.counters["phase_updates"])
                self.pretrain_obs()
                self._next_phase()
            if self.counters["phase"] == "pretrain_dyn":
                self.progress.start_phase("pretrain_dyn", self.counters["phase_updates"])
                self.pretrain_dyn()
                self._next_phase()
            if self.counters["phase"] == "pretrain_ac":
                self.progress.start_phase("pretrain_ac", self.counters["phase_updates"])
                self.pretrain_ac()
                self.evaluate_and_draw(c.eval_episodes)
                self._next_phase()
            if self.counters["phase"] == "main":
                self.progress.start_phase("main", self.counters["env_steps"])
                self.main_loop()
                self.progress.finish_phase()
                self.progress.start_phase("final_eval")
                self.counters["final_eval"] = self.evaluate_and_draw(c.final_eval_episodes, final=True)
                self.progress.advance(c.final_eval_episodes)
                self._next_phase()  # "done": the final checkpoint
            # Last, so that a run is done only when its final outputs exist (a run stopped between
            # the final checkpoint and here writes scores.json when resumed).
            self.write_scores(self.counters["final_eval"])
        finally:
            self.progress.close()  # so that what is printed next starts on a clean line
        self.log.close()
        return self.counters

    def _next_phase(self) -> None:
        if self.log.pending:  # the phase's last updates, so they are not reported under the next phase
            self.log.flush(self.counters["env_steps"], phase=self.counters["phase"],
                           phase_updates=self.counters["phase_updates"], skipped_updates=self.guard.total)
        self.progress.finish_phase()
        self.counters["phase"] = PHASES[PHASES.index(self.counters["phase"]) + 1]
        self.counters["phase_updates"] = 0
        self.checkpoint()

    def prefill(self) -> None:
        """Uniform random actions for the first prefill_steps env steps (SPEC 7)."""
        c = self.config
        while self.counters["env_steps"] < c.prefill_steps:
            self.env_step(int(self.env.action_space.sample()))
            self.progress.advance()
            self.signals.check()

    def _prefill_data(self) -> dict[str, torch.Tensor]:
        """All prefill steps as one window: obs (n+1, ...), actions/rewards/dones (n,) of steps 0..n-1."""
        n = self.replay.num_steps
        if self.replay.first_step != 0:
            raise RuntimeError("pretraining expects the prefill data at the start of the replay")
        w = self.replay.read_windows(np.array([0]), n)
        return {"obs": torch.as_tensor(w["obs"][0, 1:], device=self.device),
                "actions": torch.as_tensor(w["actions"][0, 1:], device=self.device),
                "rewards": torch.as_tensor(w["rewards"][0, 1:], device=self.device),
                "terminated": torch.as_tensor(w["terminated"][0, 1:], device=self.device),
                "truncated": torch.as_tensor(w["truncated"][0, 1:], device=self.device)}

    def _pretrain(self, phase: str, update) -> None:
        """One pretraining phase: update(indices) for each batch of its schedule
        (twm_fast.agent.pretraining); a resumed phase goes on with the batch it stopped at."""
        schedule = pretraining.batches(self.config, phase, self.replay.num_steps)
        for indices, _ in itertools.islice(schedule, self.counters["phase_updates"], None):
            self._count_update(update(torch.as_tensor(indices, device=self.device)))

    def pretrain_obs(self) -> None:
        """Observation model on random batches of single frame stacks (0.6 x 5e7 frames)."""
        data = self._prefill_data()["obs"]
        self._pretrain("obs", lambda indices: self.agent.pretrain_obs_model(data[indices]))

    @torch.no_grad()
    def _frozen_encodings(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits of every prefill observation, once: the encoder is frozen from here on."""
        om = self.agent.obs_model.eval()
        return torch.cat([om.encode(chunk) for chunk in obs.split(512)])

    def pretrain_dyn(self) -> None:
        """Dynamics model on frozen encodings of uniform windows (0.3 x 5e7 samples)."""
        data = self._prefill_data()
        logits = self._frozen_encodings(data["obs"])                                 # (n+1, 32, 32)
        om = self.agent.obs_model
        offsets = torch.arange(-1, self.config.wm_sequence_length, device=self.device)  # context, window

        def update(starts: torch.Tensor) -> dict:
            steps = starts[:, None] + offsets                                          # (N, L+1)
            context = steps.clamp_min(0)                                               # step 0 repeats for s = 0
            z = om.sample(logits[context].flatten(0, 1), "sample")[0].view(*steps.shape, -1)
            pad = steps < 0
            actions = data["actions"][context].masked_fill(pad, 0)
            rewards = data["rewards"][context].masked_fill(pad, 0.0)
            return self.agent.pretrain_dynamics(z, actions, rewards, data["terminated"][context],
                                                data["truncated"][context], logits[steps[:, 1:] + 1])

        self._pretrain("dyn", update)

    def pretrain_ac(self) -> None:
        """Actor-critic on real data: critic regression and actor entropy (pretrain_ac_fraction x 5e7)."""
        data = self._prefill_data()
        logits = self._frozen_encodings(data["obs"])
        om = self.agent.obs_model
        offsets = torch.arange(self.config.imagine_horizon, device=self.device)

        def update(starts: torch.Tensor) -> dict:
            steps = starts[:, None] + offsets                                          # (N, H) steps s..s+H-1
            obs_index = torch.cat([steps, steps[:, -1:] + 1], dim=1)                   # (N, H+1)
            z = om.sample(logits[obs_index].flatten(0, 1), "sample")[0].view(*obs_index.shape, -1)
            return self.agent.pretrain_actor_critic(z, data["rewards"][steps], data["terminated"][steps],
                                                    data["truncated"][steps])

        self._pretrain("ac", update)

    def _count_update(self, metrics: dict) -> None:
        """After a pretraining update: count, log, guard, and honour a stop request (a step boundary)."""
        self.counters["phase_updates"] += 1
        self._guard(self.log.accumulate(metrics))
        self.progress.advance()
        if self.counters["phase_updates"] % 100 == 0:
            self.log.flush(self.counters["env_steps"], phase=self.counters["phase"],
                           phase_updates=self.counters["phase_updates"], skipped_updates=self.guard.total)
        self.signals.check()

    def _guard(self, values: dict[str, float]) -> None:
        """Count a skipped update (twm_fast.nonfinite); a streak's first gets a line, a long one stops the run."""
        try:
            line = self.guard.observe(values, self._where())
        except RunFailed as exc:
            raise RunFailed(f"{exc}; stopped, the last good checkpoint is {self.last_checkpoint()}") from None
        if line:
            self.progress.message(f"warning: {line}")

    def main_loop(self) -> None:
        """Collect with the agent; training steps spread evenly over the remaining env steps (SPEC 7).

        Each pass runs the training steps due at the current env step (a resumed run first those its
        checkpoint left), then logs, evaluates and checkpoints where due, then takes the next env
        step. Every decision follows from the counters, so where the run stopped does not matter."""
        c = self.config
        counters = self.counters
        remaining = c.env_steps - c.prefill_steps
        started, start_steps = time.perf_counter(), counters["train_steps"]
        resumed_at = counters["env_steps"]  # its checkpoint exists already
        while True:
            due = (counters["env_steps"] - c.prefill_steps) * c.num_train_steps // remaining
            while counters["train_steps"] < due:
                self.train_step()
                self.signals.check()
            self.progress.update(train_steps=counters["train_steps"])
            if counters["train_steps"] - counters["last_log"] >= LOG_EVERY_TRAIN_STEPS:
                counters["last_log"] = counters["train_steps"]
                rate = (counters["train_steps"] - start_steps) / (time.perf_counter() - started)
                self.log.flush(counters["env_steps"], phase="main", train_steps=counters["train_steps"],
                               train_steps_per_s=rate, skipped_updates=self.guard.total)
            done = counters["env_steps"] >= c.env_steps
            if not done and counters["env_steps"] - max(counters["last_eval"], 0) >= c.eval_every:
                self.evaluate_and_draw(c.eval_episodes)
            if (counters["env_steps"] - c.prefill_steps) % c.checkpoint_every == 0 \
                    and counters["env_steps"] != resumed_at:
                self.checkpoint()
            if done:
                return
            self.env_step(self.policy_action())
            self.progress.advance()
            self.signals.check()

    def train_step(self) -> None:
        c = self.config
        if self._window_reader is None or self._window_reader.replay is not self.replay:
            self._window_reader = WindowReader(self.replay, c.wm_batch_size, c.wm_sequence_length,
                                               c.imagine_batch_size, self.device)
        starts = self.replay.sample_starts(c.wm_batch_size, c.wm_sequence_length)
        batch, restart_obs = self._window_reader.read(starts, self.replay.random_obs_indices(c.imagine_batch_size))
        values = self.log.accumulate(self.agent.train_step(batch, restart_obs))
        self.counters["train_steps"] += 1
        self._guard(values)

    # ---- Evaluation and pictures --------------------------------------------------------------------
    def evaluate_and_draw(self, episodes: int, final: bool = False) -> dict:
        """An evaluation (its own seed and RNG: twm_fast.evaluate) and the pictures of the run so far.
        A stop signal ends it at once: nothing the run keeps changes until it has finished."""
        c = self.config
        step = self.counters["env_steps"]
        seed = c.seed * 1_000_003 + 13 + len(self.counters["evals"])
        self._check_weights("evaluating")
        self.progress.update(status=f"evaluating {episodes} episodes")
        started = time.perf_counter()
        with self.signals.immediately():
            result = evaluate(self.agent, c, episodes, seed)
            seconds = time.perf_counter() - started
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                self.draw(step)
        result["env_steps"] = step
        result["final"] = final
        self.counters["evals"].append({k: result[k] for k in ("env_steps", "mean", "returns", "random_score")})
        self.counters["last_eval"] = step
        self.log.write(step, {"eval/mean_return": result["mean"], "eval/std_return": result["std"],
                              "eval/human_normalized": result["human_normalized"], "eval/final": final})
        self.log.write_eval(result)
        save_eval_curve(self.counters["evals"], self.run_dir / "eval_curve.png", f"TWM on {c.game}")
        self.progress.phase("final_eval").estimate_s = seconds / episodes
        self.progress.update(status=None, next_eval=self._next_eval(), **self._eval_fields(result))
        self.progress.message(f"{'final ' if final else ''}eval at env step {step:,}: mean return {result['mean']:.2f} "
                              f"(std {result['std']:.2f}, {episodes} episodes, {seconds:.0f}s)")
        return result

    def _next_eval(self) -> int | None:
        """Env step of the next periodic evaluation, None when the final one comes next."""
        c = self.config
        last = self.counters["last_eval"]
        step = max(last, 0) + c.eval_every if last >= 0 else c.prefill_steps
        return step if step < c.env_steps else None

    @staticmethod
    def _eval_fields(result: dict) -> dict:
        return {"eval_mean": result["mean"], "eval_env_step": result["env_steps"]}

    @torch.no_grad()
    def draw(self, step: int) -> None:
        """Reconstructions and imagined rollouts from random replay steps, drawn with a generator of
        their own (not the replay's), so that drawing leaves the run's random state as it was."""
        images = self.run_dir / "images"
        rng = np.random.default_rng(step)
        indices = rng.integers(self.replay.first_step, self.replay.total_steps + 1, size=8)
        obs = torch.as_tensor(self.replay.read_obs(indices), device=self.device)
        save_reconstructions(self.agent, obs, images / f"reconstructions_{step:07d}.png")
        # Imagine from 4 random real steps s (pairs z_s, z_{s+1} with a_s, r_s, done_s).
        starts = rng.integers(self.replay.first_step + 1, self.replay.total_steps - 1, size=4)
        window = to_torch(self.replay.read_windows(starts, 1), self.device)
        om = self.agent.obs_model.eval()
        z = om.sample(om.encode(window["obs"][:, 1:3].flatten(0, 1)), "argmax")[0].view(4, 2, -1)
        dones = window["terminated"][:, 1] | window["truncated"][:, 1]
        start = ImaginationStart(z, window["actions"][:, 1], window["rewards"][:, 1], dones)
        save_imagined_rollouts(self.agent, start, self.agent.restart_latents(obs), images / f"imagined_{step:07d}.png")

    def write_scores(self, final: dict) -> None:
        scores = {"game": self.config.game, "seed": self.config.seed, "env_steps": self.counters["env_steps"],
                  "train_steps": self.counters["train_steps"], "final_mean_return": final["mean"],
                  "final_std_return": final["std"], "final_episodes": final["episodes"],
                  "human_normalized": final["human_normalized"], "random_score": final["random_score"],
                  "human_score": final["human_score"],
                  "evaluations": [{"env_steps": e["env_steps"], "mean": e["mean"]} for e in self.counters["evals"]]}
        text = json.dumps(scores, indent=2).encode()
        atomic_write(self.run_dir / "scores.json", lambda f: f.write(text))


class StopRun(Exception):
    """Raised after --stop-after env steps: the run checkpoints and exits, to be resumed later."""


class _NoProgress:
    """The display's interface doing nothing (Trainer(show_progress=False): tests, library use)."""

    def phase(self, name: str) -> Phase:
        return Phase(name, name, 0, "", 0.0)

    def start_phase(self, name: str, done: int = 0) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def update(self, **fields) -> None: ...
    def finish_phase(self, summary: str | None = None) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


# ---- Command line ---------------------------------------------------------------------------------
# Command-line options that set a config field; giving one and an override of its field is refused.
FIELD_OPTIONS = {"game": "--game", "seed": "--seed", "device": "--device", "threads": "--threads"}
# --heartbeat: more than nothing, at most a day.
HEARTBEAT_SECONDS = Real(0, 86_400, open_lo=True)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m twm_fast.train",
        description="Train a TWM agent (Robine et al., ICLR 2023). Without options: the paper setting on Pong.",
        epilog="Overrides: any config field as name=value, e.g. imagine_batch_size=400 replay_temperature=inf. "
               "Presets: " + ", ".join(PRESETS))
    p.add_argument("--game", action=Once, type=ruled(field_rule("game")), default=None,
                   help="Atari game (e.g. Pong, MsPacman) or 'catch' (built-in)")
    p.add_argument("--preset", action=Once, default=None, help=f"one of {', '.join(PRESETS)} (default paper)")
    p.add_argument("--seed", action=Once, type=ruled(field_rule("seed")), default=None)
    p.add_argument("--device", action=Once, type=ruled(field_rule("device")), default=None,
                   help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", action=Once, type=path_text, default=None,
                   help="run directory (default runs/<game>-<preset>-s<seed>-<time>)")
    p.add_argument("--resume", action=Once, type=path_text, default=None, metavar="DIR",
                   help="continue the run in DIR from its last checkpoint")
    p.add_argument("--allow-slow", action="store_true", help="run even when the estimate on this device is huge")
    p.add_argument("--stop-after", action=Once, type=ruled(field_rule("env_steps")), default=None,
                   metavar="ENV_STEPS",
                   help="checkpoint and exit after this many env steps (e.g. to fit a job time limit); "
                        "continue with --resume")
    p.add_argument("--threads", action=Once, type=ruled(field_rule("threads")), default=None, metavar="N",
                   help="torch CPU threads (default: chosen for the machine, see README; saved in config.json)")
    p.add_argument("--no-progress", action="store_true",
                   help="no live display: a heartbeat line every --heartbeat seconds, as when stderr is not a terminal")
    p.add_argument("--heartbeat", action=Once, type=ruled(HEARTBEAT_SECONDS), default=60.0, metavar="SECONDS",
                   help="seconds between heartbeat lines without a live display (default 60)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything a run needs (config, device, run directory, disk space and memory), "
                        "print the resolved config and the estimate, and exit without creating anything")
    p.add_argument("overrides", nargs="*", metavar="name=value", help="config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signals = StopSignals().install()
    lock: list[RunLock] = []  # the run directory's, once it is known
    try:
        return _main(args, signals, lock)
    except (ValueError, OSError, ImportError) as exc:  # OSError: e.g. a path too long for the file system
        return refuse(exc)
    except (StopRequested, KeyboardInterrupt):
        print("\ninterrupted before the run started: nothing was written", file=sys.stderr)
        return 130
    finally:
        signals.restore()
        for held in lock:
            held.release()


def resume_point(path: Path) -> tuple[Path, Resumable | dict]:
    """--resume PATH: the run directory and the checkpoint to continue from. PATH is a run directory
    (or its checkpoints/ folder): its newest checkpoint that verifies, newer broken ones skipped; or
    a checkpoint file in a run's checkpoints/ folder: that one (to go back to it). A run directory
    without any complete checkpoint, whose run was stopped before its first (in the prefill), gives
    its config.json instead: the run starts again."""
    run_dir = run_directory_of(path)
    if run_dir is None:
        if not path.exists():
            raise FileNotFoundError(f"--resume {path}: no such run directory")
        raise ValueError(f"--resume {path}: give a run directory (or its checkpoints/ folder, or a checkpoint file "
                         "inside that folder); this file is not in a run's checkpoints/ folder")
    config_path = run_dir / "config.json"
    try:
        config_json = json.loads(config_path.read_text()) if config_path.is_file() else None
    except ValueError as exc:
        raise ValueError(f"{config_path} is not valid JSON ({exc}); restore it or resume from a checkpoint "
                         "file") from None
    store = CheckpointStore(run_dir / CHECKPOINTS_DIR)
    if config_json is not None and not store.committed() and not path.is_file():
        return run_dir, config_json
    if not store.directory.is_dir():
        raise FileNotFoundError(f"--resume {path}: {run_dir} holds no checkpoints/ folder; is it a run directory "
                                "written by `python -m twm_fast.train`?")
    if path.is_file():
        name = path.name.split(".", 1)[0]
        if name not in store.names():
            raise FileNotFoundError(f"--resume {path}: no checkpoint of that name in {store.directory}")
        return run_dir, Resumable(store.load(name, config_json))
    return run_dir, store.find(config_json)


def _resolve_config(args, lock: list[RunLock]) -> tuple[Config, Path, Resumable | dict | None]:
    """The run's config, its directory and what --resume continues: a verified checkpoint (Resumable)
    or, for a run stopped before its first checkpoint, its config.json (a dict); None for a new run.
    The run directory of --resume is locked first, except in a dry run (which only reads). ConfigError
    (one line) for any value or combination that cannot work; nothing on disk changes here."""
    if args.resume is not None:
        given = [name for name, value in (("--game", args.game), ("--preset", args.preset), ("--seed", args.seed),
                                          ("--out", args.out)) if value is not None]
        if given or args.overrides:
            what = "/".join(given + (["overrides"] if args.overrides else []))
            raise ConfigError(f"--resume continues a run with its saved config and in its directory; drop {what} "
                              "(or start a new run with --out)")
        path = Path(args.resume)
        run_dir = run_directory_of(path) or path
        if run_dir.is_dir() and not args.dry_run:  # before anything is read: a run still writing is not resumed
            lock.append(RunLock(run_dir).acquire())
        run_dir, chosen = resume_point(path)
        if isinstance(chosen, Resumable):
            if chosen.skipped_message():
                print(f"warning: {chosen.skipped_message()}", file=sys.stderr)
            saved, source = chosen.payload["config"], chosen.payload["path"]
        else:
            saved, source = chosen, run_dir / "config.json"
        try:
            config = Config.from_dict(saved)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if args.device is not None:
            config.device = args.device
        if args.threads is not None:
            config.threads = args.threads
        return config, run_dir, chosen
    overrides = list(args.overrides)
    for item in overrides:
        name = item.split("=", 1)[0].strip()
        option = FIELD_OPTIONS.get(name)
        if option is not None and getattr(args, name) is not None:
            raise ConfigError(f"{name} is given twice: {option} {shown(getattr(args, name))} and the override "
                              f"{shown(item)}; give it once")
    values = {}
    if args.game is not None:
        values["game"] = canonical_game(args.game)
    for name in ("seed", "device", "threads"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    preset = args.preset if args.preset is not None else "paper"
    config = make_config(preset, overrides, **values)
    config.game = canonical_game(config.game)
    run_dir = Path(args.out if args.out is not None else
                   f"runs/{config.game}-{preset}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    return config, run_dir, None


def _main(args, signals: StopSignals, lock: list[RunLock]) -> int:
    config, run_dir, chosen = _resolve_config(args, lock)
    resume = chosen.payload if isinstance(chosen, Resumable) else None
    if resume is not None:
        if resume["counters"]["phase"] == "done" and (run_dir / "scores.json").is_file():
            print(f"run {run_dir} is already finished: {run_dir}/scores.json", file=sys.stderr)
            return 0
        done = resume["counters"]["env_steps"]
        if args.stop_after is not None and args.stop_after <= done:
            raise ConfigError(f"--stop-after {args.stop_after}: the run is already at env step {done:,}; "
                              f"give a later step (up to env_steps={config.env_steps:,})")
    # Everything that can refuse the run does so before a run directory exists or changes.
    base = check_output_dir(run_dir, "--out" if chosen is None else "--resume", new=chosen is None)
    device = resolve_device(config.device)
    config.matmul_precision = resolve_matmul_precision(config.matmul_precision, device)
    apply_matmul_precision(config.matmul_precision)
    config.threads, why = choose_threads(config.threads, device)
    torch.set_num_threads(config.threads)
    check_installed(config, device)
    machine = Machine.probe(device)
    hours = run_hours(config, machine)
    if device.type == "cpu" and not args.allow_slow and hours > CPU_REFUSE_HOURS:
        quick = run_hours(make_config("quick"), machine)
        raise ValueError(
            f"this configuration would take {describe_hours(hours)} on {machine.name} (no CUDA device found; "
            f"the estimate of twm_fast/estimate.py). Try the CPU demo: python -m twm_fast.train --preset quick "
            f"(built-in Catch, {describe_hours(quick)} here), run on a GPU, or pass --allow-slow to start anyway.")
    space = run_space(config, model_parameters(config))
    check_space(run_dir, base, space, config.replay_capacity)
    if args.dry_run:
        print_dry_run(config, run_dir, device, why, machine, hours, space, base, chosen)
        return 0
    if chosen is None:
        created = not run_dir.exists()  # else it is empty (check_output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.append(RunLock(run_dir).acquire())
        text = json.dumps(config.to_dict(), indent=2).encode()
        atomic_write(run_dir / "config.json", lambda f: f.write(text))  # a kill never leaves half of it
    else:
        store = CheckpointStore(run_dir / CHECKPOINTS_DIR)
        if resume is not None:
            discarded = store.discard(store.newer_than(resume["manifest"]["name"]), after=describe(resume))
        else:  # stopped before its first checkpoint: nothing to continue, the run starts again
            print(f"{run_dir} holds no complete checkpoint (the run stopped before its first one): "
                  "starting it again from its config.json", file=sys.stderr)
            discarded = store.discard(store.names(), after=None)
        if discarded:
            print(discarded, file=sys.stderr)
    print(f"twm-fast: {config.game}, device {device}, {config.threads} thread(s) ({why}), run directory {run_dir}"
          + (f" (resuming at {resume['counters']['phase']}, env step {resume['counters']['env_steps']}, from "
             f"{resume['manifest']['name']})" if resume else ""), file=sys.stderr)
    signals.defer()  # from here a stop waits for a step boundary and saves a checkpoint there
    try:
        trainer = Trainer(config, run_dir, device, resume=resume, live=False if args.no_progress else None,
                          heartbeat_s=args.heartbeat, stop_after=args.stop_after, machine=machine, signals=signals)
    except BaseException:
        if chosen is None:  # a new run whose start failed leaves nothing behind: the same --out works again
            remove_failed_start(run_dir, created)
        raise
    for warning in trainer.log.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return _train(trainer, signals)


def _train(trainer: Trainer, signals: StopSignals) -> int:
    """Run, and end every way a run can end with one line and its exit code: done (0), --stop-after
    (0, a checkpoint), a stop signal (130, a checkpoint at the step boundary), a second signal
    (130, no new checkpoint), a full disk or failed numerics (1, the last good checkpoint intact)."""
    run_dir = trainer.run_dir
    again = f"continue with: python -m twm_fast.train --resume {run_dir}"
    try:
        try:
            trainer.run()
        except StopRun:
            path = trainer.checkpoint()
            print(f"stopped after {trainer.counters['env_steps']} env steps: saved {path}; {again}", file=sys.stderr)
            return 0
        except StopRequested as stop:
            path = trainer.checkpoint()
            print(f"\ninterrupted: saved {path} (on {stop.signal_name}); {again}", file=sys.stderr)
            return 130
    except KeyboardInterrupt:  # a second signal, wherever it came
        print(f"\ninterrupted again: stopped without saving; the last complete checkpoint is "
              f"{trainer.last_checkpoint()}; {again}", file=sys.stderr)
        return 130
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        print(f"error: {disk_full_message(exc)}; the run stopped. The last complete checkpoint, "
              f"{trainer.last_checkpoint()}, is intact: free some space and {again}", file=sys.stderr)
        return 1
    print(f"done: {run_dir}/scores.json", file=sys.stderr)
    return 0


def remove_failed_start(run_dir: Path, created: bool) -> None:
    """Undo a new run's start that failed before it began (nothing to resume there): the directory if
    this start made it, else what it wrote into the empty directory it was given."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for path in run_dir.iterdir():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def print_dry_run(config: Config, run_dir: Path, device: torch.device, why: str, machine: Machine, hours: float,
                  space: RunSpace, base: Path, chosen: Resumable | dict | None) -> None:
    """What --dry-run found: the run as it would start, its estimate and space, and the resolved config."""
    free_disk, free_memory = shutil.disk_usage(base).free, available_memory()
    if isinstance(chosen, Resumable):
        counters = chosen.payload["counters"]
        where = (f"resume {run_dir} at {counters['phase']}, env step {counters['env_steps']:,}, from "
                 f"{chosen.payload['manifest']['name']}")
    elif chosen is not None:
        where = f"start {run_dir} again from its config.json (it holds no complete checkpoint)"
    else:
        where = f"write the run to {run_dir}"
    lines = [
        "dry run: every check passed and nothing was created. The run would:",
        f"  train on {config.game} on device {device} with {config.threads} thread(s) ({why}), "
        f"matmul precision {config.matmul_precision}",
        f"  {where}",
        f"  take {describe_hours(hours)} on {machine.name} (the estimate of twm_fast/estimate.py, evaluations "
        f"left out; {config.num_train_steps:,} training steps)",
        f"  need {describe_bytes(space.disk)} on disk, of {describe_bytes(free_disk)} free in {base}: up to "
        f"{space.checkpoints} checkpoints of {describe_bytes(space.replay_file + space.model_file)} (the replay "
        f"{describe_bytes(space.replay_file)} at its capacity of {config.replay_capacity:,} steps, the model "
        f"{describe_bytes(space.model_file)}) and the logs",
        f"  hold the replay in memory: {describe_bytes(space.replay_memory)}"
        + (f", of {describe_bytes(free_memory)} available" if free_memory is not None else ""),
        "resolved config (config.json):",
        "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in config.to_dict().items()) + "\n}",
    ]
    print(printable("\n".join(lines)))


if __name__ == "__main__":
    sys.exit(main())
