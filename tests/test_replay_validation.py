"""The replay API refuses what it cannot use: every bad argument is a ValueError naming the method and
the argument, the same message from both backends, and the replay is unchanged after it. Also the
replay file's size at capacity that the run's free-space check relies on."""
import math

import numpy as np
import pytest

from twm_fast.replay import make_replay, replay_class
from twm_fast.replay.common import memory_bytes, saved_bytes

SHAPE = (3, 5)
K = 4


def frames(value: int) -> np.ndarray:
    return np.full((K, *SHAPE), value, np.uint8)


def filled(backend: str, steps: int = 12, capacity: int = 20):
    """A replay of `steps` steps of one long episode (each step shifts in a new frame)."""
    replay = make_replay(backend, capacity=capacity, frame_shape=SHAPE, frame_stack=K, seed=3)
    obs = frames(0)
    replay.add_first(obs)
    for t in range(steps):
        obs = np.concatenate([obs[1:], np.full((1, *SHAPE), t + 1, np.uint8)])
        replay.add(t % 3, 0.5, False, False, obs)
    return replay


GOOD_NEXT = np.concatenate([frames(0)[1:], np.full((1, *SHAPE), 99, np.uint8)])

# (call, the text the message must hold); each call gets a replay of 12 steps (valid starts [0, 9]
# for length 3).
BAD_CALLS = [
    (lambda r: r.sample_starts(11, 3), "sample_starts(batch_size): need at least 11 valid window starts, have 10"),
    (lambda r: r.sample_starts(2.0, 3), "batch_size must be an integer, got 2.0"),
    (lambda r: r.sample_starts(True, 3), "batch_size must be an integer, got True"),
    (lambda r: r.sample_starts(-1, 3), "batch_size must be >= 0, got -1"),
    (lambda r: r.sample_starts(10**30, 3), "batch_size must be <= "),
    (lambda r: r.sample_starts(2, 0), "length must be >= 1, got 0"),
    (lambda r: r.sample_starts(2, 1.5), "length must be an integer, got 1.5"),
    (lambda r: r.sample_starts(2, "3"), "length must be an integer, got '3'"),
    (lambda r: r.sample_starts(1, 13), "need at least 1 valid window starts, have 0"),
    (lambda r: r.read_windows([10], 3), "read_windows(starts): start 10 is not a valid window start for length 3: "
                                        "valid starts are [0, 9]"),
    (lambda r: r.read_windows([-1], 3), "read_windows(starts): start -1 is not a valid window start"),
    (lambda r: r.read_windows([0], 10**12), "start 0 is not a valid window start for length 1000000000000: "
                                            "valid starts are none"),
    (lambda r: r.read_windows([0.5], 3), "read_windows(starts) must be a 1-D array of integers"),
    (lambda r: r.read_windows([[1, 2]], 3), "read_windows(starts) must be a 1-D array of integers, got shape (1, 2)"),
    (lambda r: r.read_windows([True], 3), "read_windows(starts) must be a 1-D array of integers"),
    (lambda r: r.read_windows([[1], [2, 3]], 3), "read_windows(starts) must be a 1-D array of integers"),
    (lambda r: r.read_windows(np.array([2**64 - 1], np.uint64), 3), "beyond int64"),
    (lambda r: r.read_windows([1], 3, out=[]), "read_windows(out) must be a dict of arrays, got list"),
    (lambda r: r.read_obs([13]), "read_obs(indices): observation 13 is not stored: readable observations are [0, 12]"),
    (lambda r: r.read_obs(["a"]), "read_obs(indices) must be a 1-D array of integers"),
    (lambda r: r.read_obs([0], out=np.empty((1, K, *SHAPE), np.float32)), "out must be a writeable C-contiguous uint8"),
    (lambda r: r.random_obs_indices(-1), "n must be >= 0, got -1"),
    (lambda r: r.random_obs_indices(3.0), "n must be an integer, got 3.0"),
    (lambda r: r.mark_visited([12]), "mark_visited(starts): step 12 is not stored"),
    (lambda r: r.visit_counts(0), "length must be >= 1, got 0"),
    (lambda r: r.uniform_starts(-2), "length must be >= 1, got -2"),
    (lambda r: r.add(-1, 0.0, False, False, GOOD_NEXT), "add(action) must be >= 0, got -1"),
    (lambda r: r.add(1.5, 0.0, False, False, GOOD_NEXT), "add(action) must be an integer, got 1.5"),
    (lambda r: r.add(1, math.nan, False, False, GOOD_NEXT), "add(reward) must be a number in [-1, 1]"),
    (lambda r: r.add(1, 3.0, False, False, GOOD_NEXT), "add(reward) must be a number in [-1, 1]"),
    (lambda r: r.add(1, "0", False, False, GOOD_NEXT), "add(reward) must be a number in [-1, 1]"),
    (lambda r: r.add(1, 0.0, "no", False, GOOD_NEXT), "add(terminated) must be a bool, got 'no'"),
    (lambda r: r.add(1, 0.0, False, 2, GOOD_NEXT), "add(truncated) must be a bool, got 2"),
    (lambda r: r.add(1, 0.0, False, False, GOOD_NEXT.astype(np.int64)), "next_obs must be uint8, got int64"),
    (lambda r: r.add(1, 0.0, False, False, GOOD_NEXT[:2]), "next_obs must have shape (4, 3, 5), got (2, 3, 5)"),
    (lambda r: r.add_first(frames(0)), "add_first() was already called"),
    (lambda r: r.restart_episode(np.zeros((K, 5, 3), np.uint8)), "obs must have shape (4, 3, 5)"),
    (lambda r: r.load_state_dict([]), "load_state_dict(state) must be a dict from state_dict(), got list"),
    (lambda r: r.load_state_dict({**r.state_dict(), "total_steps": 2.5}),
     "state dict entry 'total_steps' must be an integer"),
    (lambda r: r.save(None), "save(path) must be a file path, got NoneType"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS, ids=[m[:40] for _, m in BAD_CALLS])
def test_bad_arguments_are_named_and_change_nothing(call, message):
    errors = {}
    for backend in ("reference", "cpp"):
        replay = filled(backend)
        before = replay.state_dict()
        with pytest.raises(ValueError) as error:
            call(replay)
        assert type(error.value) is ValueError, (backend, error.value)  # not a TypeError, IndexError, ...
        assert message in str(error.value), (backend, str(error.value))
        assert "\n" not in str(error.value)
        after = replay.state_dict()
        for key, value in before.items():  # contents, counters and the RNG: a refused call draws nothing
            assert np.array_equal(value, after[key]), (backend, key)
        errors[backend] = str(error.value)
    # One message from both backends (C++-only wording would mean the Python checks were skipped).
    assert errors["reference"] == errors["cpp"]


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("kwargs,message", [
    ({"capacity": math.inf}, "capacity must be an integer, got inf"),
    ({"capacity": math.nan}, "capacity must be an integer, got nan"),
    ({"capacity": 0}, "capacity must be >= 1, got 0"),
    ({"capacity": "5"}, "capacity must be an integer, got '5'"),
    ({"capacity": 2**41}, "capacity must be <= "),
    ({"capacity": 5, "frame_shape": 64}, "frame_shape must be (height, width), got 64"),
    ({"capacity": 5, "frame_shape": (64,)}, "frame_shape must be (height, width) with positive sizes"),
    ({"capacity": 5, "frame_shape": (64, 0)}, "frame_shape must be >= 1, got 0"),
    ({"capacity": 5, "frame_stack": 0}, "frame_stack must be >= 1, got 0"),
    ({"capacity": 5, "temperature": math.nan}, "temperature must be > 0"),
    ({"capacity": 5, "temperature": "20"}, "temperature must be > 0"),
    ({"capacity": 5, "seed": -1}, "seed must be >= 0, got -1"),
    ({"capacity": 5, "seed": 1.5}, "seed must be an integer, got 1.5"),
])
def test_bad_configurations_are_named(backend, kwargs, message):
    with pytest.raises(ValueError) as error:
        make_replay(backend, **kwargs)
    assert type(error.value) is ValueError and message in str(error.value)


def test_an_empty_replay_refuses_reads_with_the_same_message():
    for call, message in [(lambda r: r.random_obs_indices(1), "no observations stored yet"),
                          (lambda r: r.read_obs([0]), "readable observations are none"),
                          (lambda r: r.sample_starts(1, 1), "need at least 1 valid window starts, have 0")]:
        seen = set()
        for backend in ("reference", "cpp"):
            with pytest.raises(ValueError, match=message) as error:
                call(make_replay(backend, capacity=5, frame_shape=SHAPE))
            seen.add(str(error.value))
        assert len(seen) == 1, seen


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_file_size_at_capacity_is_what_the_free_space_check_assumes(tmp_path, backend):
    capacity = 16
    replay = filled(backend, steps=40, capacity=capacity)  # wrapped: full
    path = tmp_path / "r.replay"
    replay.save(str(path))
    size = path.stat().st_size
    bound = saved_bytes(capacity, SHAPE, K)
    assert bound - 4096 <= size <= bound
    assert memory_bytes(capacity, SHAPE, K) >= (capacity + K) * SHAPE[0] * SHAPE[1]
    assert replay_class(backend).load(str(path)).total_steps == 40
