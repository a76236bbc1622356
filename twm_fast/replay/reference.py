"""The replay and its balanced sampler in plain numpy: the specification (SPEC 6, Eq. 6).

Semantics follow the authors' published replay buffer. The stream holds env steps i = 0, 1, ...:
the observation o_i at which a_i was taken (a uint8 frame stack (K, H, W), oldest frame first),
a_i, r_i (already tanh-transformed), terminated_i and truncated_i; after the last step its next
observation, so n steps carry n + 1 observations. o_{i+1} is the env's next observation, or the
observation reset() returned when step i was done (the final observation is dropped, as in the
published code).

Frame-stack contract of our envs: a reset observation is K copies of one frame and every step
shifts in exactly one new frame. So each observation stores only its newest frame and a flag
"came from reset"; the stack of obs j is rebuilt from the frames of j-K+1 .. j, clamped to the last
reset observation <= j. Inserts check the contract, so reads equal what the env returned.

Indices are logical (monotone, never wrapping). With T = total_steps steps appended and capacity C:
  stored steps            [F, T-1], F = first_step = max(0, T - C)
  stored frames           obs [max(0, F-K+1), T] (C + K frame slots)
  readable observations   [F, T]
  valid window starts     [lo, T - L] for length L, lo = 0 if F == 0 else F + 1; a window reads
                          the context step s-1 (padded when s == 0), steps s..s+L-1 and obs s+L.

Written for clarity, not speed: `FastReplay` (fast.py, C++ core in csrc/) is held to this class
bit for bit (reads, counters, state) and in distribution (draws).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from twm_fast.replay.common import (
    CONFIG_KEYS,
    ReplayBase,
    check_batch,
    check_indices,
    check_integer,
    check_obs,
    check_obs_out,
    check_readable,
    check_seed,
    check_starts,
    check_state,
    check_step,
    check_stored,
    check_window_out,
    start_range,
    state_sizes,
    window_arrays,
)


# ---- The reference replay ------------------------------------------------------------------------


class ReferenceReplay(ReplayBase):
    """Ring buffer of single frames + balanced sampler (Eq. 6), in numpy.

    Args:
        capacity: steps kept; the oldest is overwritten when full.
        frame_shape: (H, W) of one frame.
        frame_stack: K, frames per observation.
        temperature: tau of Eq. 6; math.inf gives uniform sampling.
        seed: seeds the replay's own RNG (numpy PCG64), whose state travels in state_dict().
    """

    rng_kind = "numpy.PCG64"

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (64, 64),
        frame_stack: int = 4,
        temperature: float = 20.0,
        seed: int = 0,
    ):
        self._set_config(capacity, frame_shape, frame_stack, temperature)
        seed = check_seed(seed)
        self._obs_slots = self.capacity + self.frame_stack
        # The newest frame of obs j and its "came from reset" flag sit at slot j % (C + K);
        # step i sits at slot i % C.
        self._frames = np.zeros((self._obs_slots, *self.frame_shape), np.uint8)
        self._is_reset = np.zeros(self._obs_slots, np.bool_)
        self._actions = np.zeros(self.capacity, np.int64)
        self._rewards = np.zeros(self.capacity, np.float32)
        self._terminated = np.zeros(self.capacity, np.bool_)
        self._truncated = np.zeros(self.capacity, np.bool_)
        self._visits = np.zeros(self.capacity, np.int64)  # v_s of Eq. 6
        self._rng = np.random.default_rng(seed)
        self._started = False
        self.total_steps = 0

    # ---- Positions --------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return min(self.total_steps, self.capacity)

    @property
    def first_step(self) -> int:
        return self.total_steps - self.num_steps

    def _start_range(self, length: int) -> tuple[int, int]:
        """Valid window starts [lo, hi] (empty if hi < lo) for windows of `length` >= 1 steps."""
        return start_range(self.first_step, self.total_steps, self._started, length)

    # ---- Appending --------------------------------------------------------------------------------
    def add_first(self, obs: np.ndarray) -> None:
        """Store the observation (K, H, W) uint8 of the very first env.reset(); once."""
        obs = check_obs(obs, self.frame_stack, self.frame_shape)
        if self._started:
            raise ValueError("add_first() was already called; use add() for later steps")
        self._check_reset_obs(obs, "add_first(obs)")
        self._write_obs(0, obs, reset=True)
        self._started = True

    def add(
        self, action: int, reward: float, terminated: bool, truncated: bool, next_obs: np.ndarray
    ) -> None:
        """Append step T = total_steps (a_T, r_T already tanh'd, flags) and o_{T+1} = next_obs,
        the reset observation if the step was done."""
        action, reward, terminated, truncated = check_step(action, reward, terminated, truncated)
        next_obs = check_obs(next_obs, self.frame_stack, self.frame_shape, "next_obs")
        if not self._started:
            raise ValueError("add() before add_first(): store the first reset observation first")
        done = bool(terminated) or bool(truncated)
        if done:
            self._check_reset_obs(next_obs, "add(next_obs) after a done step")
        else:
            previous = self._stack(self.total_steps)
            for k in range(self.frame_stack - 1):
                if not np.array_equal(next_obs[k], previous[k + 1]):
                    raise ValueError(
                        f"add(next_obs): frame {k} of next_obs differs from frame {k + 1} of the previous "
                        "observation; a step that is not done must shift in exactly one new frame "
                        "(frame-stack contract, SPEC 6). Was terminated or truncated meant to be set?"
                    )
        i = self.total_steps % self.capacity  # overwrites the oldest step once full
        self._actions[i] = action
        self._rewards[i] = reward
        self._terminated[i] = terminated
        self._truncated[i] = truncated
        self._visits[i] = 0
        self._write_obs(self.total_steps + 1, next_obs, reset=done)
        self.total_steps += 1

    def restart_episode(self, obs: np.ndarray) -> None:
        """End the current episode at the newest observation and continue from `obs`, a fresh
        reset observation (after a resume, when the env itself could not be saved): the last step
        becomes truncated unless it was already done, and o_T is replaced by obs."""
        obs = check_obs(obs, self.frame_stack, self.frame_shape)
        if not self._started:
            raise ValueError("restart_episode() before add_first()")
        self._check_reset_obs(obs, "restart_episode(obs)")
        if self.total_steps > 0:
            i = (self.total_steps - 1) % self.capacity
            self._truncated[i] |= not self._terminated[i]
        self._write_obs(self.total_steps, obs, reset=True)

    def _check_reset_obs(self, obs: np.ndarray, what: str) -> None:
        for k in range(self.frame_stack - 1):
            if not np.array_equal(obs[k], obs[-1]):
                raise ValueError(
                    f"{what}: a reset observation must be {self.frame_stack} copies of one frame, but "
                    f"frame {k} differs from the last (frame-stack contract, SPEC 6)"
                )

    def _write_obs(self, j: int, obs: np.ndarray, reset: bool) -> None:
        self._frames[j % self._obs_slots] = obs[-1]  # only the newest frame is new
        self._is_reset[j % self._obs_slots] = reset

    # ---- Reading ----------------------------------------------------------------------------------
    def _stack(self, j: int) -> np.ndarray:
        """(K, H, W): frames of obs j-K+1 .. j, clamped to the last reset obs <= j (repeated)."""
        sources = [j]
        for _ in range(self.frame_stack - 1):
            newest = sources[0]
            sources.insert(0, newest if self._is_reset[newest % self._obs_slots] else newest - 1)
        return self._frames[np.array(sources) % self._obs_slots]

    def read_windows(
        self, starts: np.ndarray, length: int, out: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Windows of `length` steps with one context step before and the next observation after.

        Args:
            starts: (B,) valid window starts (logical step indices).
            out: optional preallocated arrays of the shapes below, filled in place.
        Returns dict:
            obs (B, L+2, K, H, W) uint8: o_{s-1}, o_s .. o_{s+L-1}, o_{s+L}
            actions (B, L+1) int64, rewards (B, L+1) float32, terminated, truncated (B, L+1) bool:
            steps s-1 .. s+L-1. For s == 0 the context is padded as in the published code: obs o_0,
            action 0, reward 0, and the terminated/truncated of step 0.
        """
        starts = check_indices(starts, "read_windows(starts)")
        length = check_integer(length, "length", 1)
        lo, hi = self._start_range(length)
        check_starts(starts, lo, hi, length, self._describe_steps(), "read_windows(starts)")
        if out is None:
            out = window_arrays(len(starts), length, self.frame_stack, self.frame_shape)
        else:
            check_window_out(out, len(starts), length, self.frame_stack, self.frame_shape)
        for b, s in enumerate(starts):
            out["obs"][b, 0] = self._stack(max(s - 1, 0))
            for t in range(length + 1):
                out["obs"][b, t + 1] = self._stack(s + t)
            for t, i in enumerate(range(s - 1, s + length)):
                slot = max(i, 0) % self.capacity
                out["actions"][b, t] = self._actions[slot] if i >= 0 else 0
                out["rewards"][b, t] = self._rewards[slot] if i >= 0 else 0.0
                out["terminated"][b, t] = self._terminated[slot]
                out["truncated"][b, t] = self._truncated[slot]
        return out

    def read_obs(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, K, H, W) uint8 stacks of the observations at `indices` in [first_step, total_steps].
        `out`: a preallocated array to write into."""
        indices = check_indices(indices, "read_obs(indices)")
        if out is not None:
            check_obs_out(out, len(indices), self.frame_stack, self.frame_shape)
        check_readable(indices, self.first_step, self.total_steps, self._started, "read_obs(indices)")
        if out is None:
            out = np.empty((len(indices), self.frame_stack, *self.frame_shape), np.uint8)
        for n, j in enumerate(indices):
            out[n] = self._stack(j)
        return out

    # ---- Sampling ---------------------------------------------------------------------------------
    def sample_starts(self, batch_size: int, length: int, *, update_visits: bool = True) -> np.ndarray:
        """Balanced sampling (Eq. 6): (B,) int64 distinct valid starts drawn with
        p_s = softmax(-v_s / tau) over the valid starts, successively without replacement; then
        v_s += 1 for each drawn start (unless update_visits=False: tests and diagnostics)."""
        length = check_integer(length, "length", 1)
        lo, hi = self._start_range(length)
        batch_size = check_batch(batch_size, lo, hi, length, self._describe_steps())
        n = hi - lo + 1
        if batch_size == 0:
            return np.empty(0, np.int64)
        slots = np.arange(lo, hi + 1) % self.capacity
        if math.isinf(self.temperature):
            p = None  # tau = inf: uniform
        else:
            logits = -self._visits[slots] / self.temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
        starts = self._rng.choice(n, size=batch_size, replace=False, p=p).astype(np.int64) + lo
        if update_visits:
            self._visits[starts % self.capacity] += 1
        return starts

    def uniform_starts(self, length: int) -> np.ndarray:
        """Every valid start with stride `length` from a random offset in [0, length), shuffled
        (published generate_uniform_indices); counters untouched."""
        length = check_integer(length, "length", 1)
        lo, hi = self._start_range(length)
        offset = int(self._rng.integers(length))
        return self._rng.permutation(np.arange(lo + offset, hi + 1, length, dtype=np.int64))

    def random_obs_indices(self, n: int) -> np.ndarray:
        """(n,) int64 uniform over the readable observations [first_step, total_steps]."""
        n = check_integer(n, "n")
        if not self._started:
            raise ValueError("no observations stored yet: call add_first() first")
        return self._rng.integers(self.first_step, self.total_steps + 1, size=n, dtype=np.int64)

    def mark_visited(self, starts: np.ndarray) -> None:
        """v_s += 1 per occurrence of each stored step s (applies another sampler's draws)."""
        starts = check_indices(starts, "mark_visited(starts)")
        check_stored(starts, self.first_step, self.total_steps, "mark_visited(starts)")
        np.add.at(self._visits, starts % self.capacity, 1)

    def visit_counts(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, v) int64 over the valid starts for `length`."""
        length = check_integer(length, "length", 1)
        lo, hi = self._start_range(length)
        starts = np.arange(lo, max(hi + 1, lo), dtype=np.int64)
        return starts, self._visits[starts % self.capacity].copy()

    # ---- State ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config, contents in logical order (frames and is_reset of obs [max(0, F-K+1), T]; steps
        [F, T-1]), counters and RNG state; the same layout for both backends except the RNG."""
        num_obs, num_steps = state_sizes(self.total_steps, self._started, self.capacity, self.frame_stack)
        obs_slots = np.arange(self.total_steps - num_obs + 1, self.total_steps + 1) % self._obs_slots
        step_slots = np.arange(self.first_step, self.total_steps) % self.capacity
        bits = self._rng.bit_generator.state
        mask = (1 << 64) - 1
        rng_state = [
            bits["state"]["state"] >> 64,
            bits["state"]["state"] & mask,
            bits["state"]["inc"] >> 64,
            bits["state"]["inc"] & mask,
            bits["has_uint32"],
            bits["uinteger"],
        ]
        return {
            "capacity": self.capacity,
            "frame_shape": self.frame_shape,
            "frame_stack": self.frame_stack,
            "temperature": self.temperature,
            "total_steps": self.total_steps,
            "started": self._started,
            "frames": self._frames[obs_slots],
            "is_reset": self._is_reset[obs_slots],
            "actions": self._actions[step_slots],
            "rewards": self._rewards[step_slots],
            "terminated": self._terminated[step_slots],
            "truncated": self._truncated[step_slots],
            "visits": self._visits[step_slots],
            "rng_kind": self.rng_kind,
            "rng_state": np.array(rng_state, np.uint64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict() of a replay with the same config and backend."""
        check_state(state, {key: getattr(self, key) for key in CONFIG_KEYS}, self.rng_kind)
        total_steps, started = int(state["total_steps"]), bool(state["started"])
        num_obs, num_steps = state_sizes(total_steps, started, self.capacity, self.frame_stack)
        first_step = total_steps - num_steps
        obs = np.arange(total_steps - num_obs + 1, total_steps + 1)
        done = state["terminated"] | state["truncated"]
        after_done = np.array([o > first_step and done[o - 1 - first_step] for o in obs], np.bool_)
        checked = (obs > first_step) | (obs == 0)
        if np.any(state["is_reset"][checked] != (after_done | (obs == 0))[checked]):
            raise ValueError(
                "inconsistent state: exactly observation 0 and those after a done step are resets"
            )
        if np.any(state["visits"] < 0):
            raise ValueError("inconsistent state: negative visit count")
        if np.shape(state["rng_state"]) != (6,):
            raise ValueError("state dict entry 'rng_state' must be 6 words of numpy PCG64 state")
        hi, lo = (int(x) for x in state["rng_state"][:2])
        inc_hi, inc_lo, has_uint32, uinteger = (int(x) for x in state["rng_state"][2:])
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": hi << 64 | lo, "inc": inc_hi << 64 | inc_lo},
            "has_uint32": has_uint32,
            "uinteger": uinteger,
        }
        self.total_steps, self._started = total_steps, started
        self._frames[obs % self._obs_slots] = state["frames"]
        self._is_reset[obs % self._obs_slots] = state["is_reset"]
        step_slots = np.arange(first_step, total_steps) % self.capacity
        for key in ("actions", "rewards", "terminated", "truncated", "visits"):
            getattr(self, f"_{key}")[step_slots] = state[key]
