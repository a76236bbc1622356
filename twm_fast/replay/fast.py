"""The replay backed by the C++ core (csrc/replay_core.hpp): same API and semantics as
`ReferenceReplay` (reference.py, the specification), bit for bit on reads, counters and state.

Differences that are by design: the balanced sampler keeps Eq. 6 weights in a sum tree (a batch
costs O((B + L) log C), not a softmax over all C entries per batch) and draws from its own
xoshiro256** RNG, so draws follow the same distribution as the reference but not the same
sequence. read_windows / read_obs write straight into the caller's arrays with the GIL released.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twm_fast import _replay
from twm_fast.replay.common import (
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


class FastReplay(ReplayBase):
    """Ring buffer of single frames + balanced sampler (Eq. 6), in C++. Args as `ReferenceReplay`."""

    rng_kind = "xoshiro256**"

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (64, 64),
        frame_stack: int = 4,
        temperature: float = 20.0,
        seed: int = 0,
    ):
        self._set_config(capacity, frame_shape, frame_stack, temperature)
        self._core = _replay.ReplayCore(
            self.capacity, self.frame_stack, *self.frame_shape, self.temperature, check_seed(seed)
        )

    @property
    def total_steps(self) -> int:
        return self._core.total_steps

    @property
    def num_steps(self) -> int:
        return self._core.num_steps

    @property
    def first_step(self) -> int:
        return self._core.first_step

    def _start_range(self, length: int) -> tuple[int, int]:
        return start_range(self.first_step, self.total_steps, self._core.started, length)

    # ---- Appending --------------------------------------------------------------------------------
    def add_first(self, obs: np.ndarray) -> None:
        """Store the observation (K, H, W) uint8 of the very first env.reset(); once."""
        self._core.add_first(check_obs(obs, self.frame_stack, self.frame_shape))

    def add(
        self, action: int, reward: float, terminated: bool, truncated: bool, next_obs: np.ndarray
    ) -> None:
        """Append step T (a_T, r_T already tanh'd, flags) and o_{T+1} = next_obs (reset obs if done)."""
        action, reward, terminated, truncated = check_step(action, reward, terminated, truncated)
        next_obs = check_obs(next_obs, self.frame_stack, self.frame_shape, "next_obs")
        self._core.add(action, reward, terminated, truncated, next_obs)

    def restart_episode(self, obs: np.ndarray) -> None:
        """End the current episode here (the last step becomes truncated unless already done) and
        replace o_T by `obs`, a fresh reset observation: for resuming, when the env was not saved."""
        self._core.restart_episode(check_obs(obs, self.frame_stack, self.frame_shape))

    # ---- Reading ----------------------------------------------------------------------------------
    def read_windows(
        self, starts: np.ndarray, length: int, out: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """obs (B, L+2, K, H, W) uint8 [o_{s-1}, o_s .. o_{s+L}]; actions (B, L+1) int64, rewards
        (B, L+1) float32, terminated / truncated (B, L+1) bool [steps s-1 .. s+L-1]; s == 0 pads
        the context (o_0, action 0, reward 0, flags of step 0). `out`: preallocated arrays."""
        starts = check_indices(starts, "read_windows(starts)")
        length = check_integer(length, "length", 1)
        check_starts(starts, *self._start_range(length), length, self._describe_steps(), "read_windows(starts)")
        if out is None:
            out = window_arrays(len(starts), length, self.frame_stack, self.frame_shape)
        else:
            check_window_out(out, len(starts), length, self.frame_stack, self.frame_shape)
        self._core.read_windows(
            starts, length, out["obs"], out["actions"], out["rewards"], out["terminated"], out["truncated"]
        )
        return out

    def read_obs(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, K, H, W) uint8 stacks of the observations at `indices` in [first_step, total_steps].
        `out`: a preallocated array to write into."""
        indices = check_indices(indices, "read_obs(indices)")
        if out is None:
            check_readable(indices, self.first_step, self.total_steps, self._core.started, "read_obs(indices)")
            out = np.empty((len(indices), self.frame_stack, *self.frame_shape), np.uint8)
        else:
            check_obs_out(out, len(indices), self.frame_stack, self.frame_shape)
            check_readable(indices, self.first_step, self.total_steps, self._core.started, "read_obs(indices)")
        self._core.read_obs(indices, out)
        return out

    # ---- Sampling ---------------------------------------------------------------------------------
    def sample_starts(self, batch_size: int, length: int, *, update_visits: bool = True) -> np.ndarray:
        """Balanced sampling (Eq. 6): (B,) int64 distinct valid starts, p_s = softmax(-v_s / tau),
        successively without replacement; then v_s += 1 for each (unless update_visits=False)."""
        length = check_integer(length, "length", 1)
        batch_size = check_batch(batch_size, *self._start_range(length), length, self._describe_steps())
        out = np.empty(batch_size, np.int64)
        self._core.sample_starts(batch_size, length, out, bool(update_visits))
        return out

    def uniform_starts(self, length: int) -> np.ndarray:
        """Every valid start with stride `length` from a random offset in [0, length), shuffled
        (published generate_uniform_indices); counters untouched."""
        return self._core.uniform_starts(check_integer(length, "length", 1))

    def random_obs_indices(self, n: int) -> np.ndarray:
        """(n,) int64 uniform over the readable observations [first_step, total_steps]."""
        n = check_integer(n, "n")
        if not self._core.started:
            raise ValueError("no observations stored yet: call add_first() first")
        out = np.empty(n, np.int64)
        self._core.random_obs_indices(int(n), out)
        return out

    def mark_visited(self, starts: np.ndarray) -> None:
        """v_s += 1 per occurrence of each stored step s (applies another sampler's draws)."""
        starts = check_indices(starts, "mark_visited(starts)")
        check_stored(starts, self.first_step, self.total_steps, "mark_visited(starts)")
        self._core.mark_visited(starts)

    def visit_counts(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, v) int64 over the valid starts for `length`."""
        return self._core.visit_counts(check_integer(length, "length", 1))

    # ---- State ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Same layout as ReferenceReplay.state_dict(), with this backend's RNG state."""
        core = self._core
        total_steps, started = core.total_steps, core.started
        num_obs, num_steps = state_sizes(total_steps, started, self.capacity, self.frame_stack)
        state = {
            "capacity": self.capacity,
            "frame_shape": self.frame_shape,
            "frame_stack": self.frame_stack,
            "temperature": self.temperature,
            "total_steps": total_steps,
            "started": started,
            "frames": np.empty((num_obs, *self.frame_shape), np.uint8),
            "is_reset": np.empty(num_obs, np.bool_),
            "actions": np.empty(num_steps, np.int64),
            "rewards": np.empty(num_steps, np.float32),
            "terminated": np.empty(num_steps, np.bool_),
            "truncated": np.empty(num_steps, np.bool_),
            "visits": np.empty(num_steps, np.int64),
            "rng_kind": self.rng_kind,
            "rng_state": core.rng_state(),
        }
        core.export_state(
            *(
                state[key]
                for key in ("frames", "is_reset", "actions", "rewards", "terminated", "truncated", "visits")
            )
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict() of a replay with the same config and backend."""
        check_state(
            state,
            {
                "capacity": self.capacity,
                "frame_shape": self.frame_shape,
                "frame_stack": self.frame_stack,
                "temperature": self.temperature,
            },
            self.rng_kind,
        )
        rng_state = np.ascontiguousarray(state["rng_state"], np.uint64)
        if rng_state.shape != (4,) or not rng_state.any():
            raise ValueError(
                "state dict entry 'rng_state' must be 4 words of xoshiro256** state, not all zero"
            )
        arrays = (
            np.ascontiguousarray(state[key])
            for key in ("frames", "is_reset", "actions", "rewards", "terminated", "truncated", "visits")
        )
        self._core.import_state(int(state["total_steps"]), bool(state["started"]), *arrays)
        self._core.set_rng_state(rng_state)
