"""Replay benchmarks (SPEC 6): the C++ balanced sampler against the reference's softmax + choice,
and the C++ window gather against numpy fancy indexing of stored stacks.

    pytest benches --benchmark-only -k replay
"""

import time

import numpy as np
import pytest

from twm_fast.replay import make_replay

CAPACITY = 100_000  # Atari 100k: every step of a run stays in the replay
BATCH, LENGTH = 100, 16  # SPEC 5: B = 100 windows of L = 16 steps (+ context + next obs = 18 stacks)
MIN_SPEEDUP = 50  # the C++ sampler's floor against the reference (issue: C++ replay ring buffer)


def filled_replay(backend: str, frame_shape: tuple[int, int], seed: int = 0):
    """CAPACITY steps of one long episode, then random visit counts (0..99) as after training."""
    replay = make_replay(backend, capacity=CAPACITY, frame_shape=frame_shape, seed=seed)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (257, *frame_shape), dtype=np.uint8)
    obs = np.repeat(frames[:1], 4, axis=0)
    replay.add_first(obs)
    for i in range(CAPACITY):
        obs = np.concatenate([obs[1:], frames[i % 256 + 1][None]])
        replay.add(i % 6, 0.1, False, False, obs)
    state = replay.state_dict()
    state["visits"] = rng.integers(0, 100, replay.num_steps)
    replay.load_state_dict(state)
    return replay


# The sampler does not look at frames: 8x8 frames keep building 100,000 steps quick.
@pytest.fixture(scope="module")
def sampler_replays():
    return {backend: filled_replay(backend, (8, 8)) for backend in ("cpp", "reference")}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@pytest.mark.benchmark(group="replay-sample B=100 of 100k")
def test_replay_sample_cpp(benchmark, sampler_replays):
    cpp, reference = sampler_replays["cpp"], sampler_replays["reference"]
    starts = benchmark(cpp.sample_starts, BATCH, LENGTH)
    assert len(np.unique(starts)) == BATCH
    # The floor is part of the issue: measure the reference here too, in the same process.
    speedup = (
        median_seconds(lambda: reference.sample_starts(BATCH, LENGTH), 30) / benchmark.stats.stats.median
    )
    benchmark.extra_info["speedup_vs_reference"] = round(speedup, 1)
    assert speedup >= MIN_SPEEDUP


@pytest.mark.benchmark(group="replay-sample B=100 of 100k")
def test_replay_sample_reference(benchmark, sampler_replays):
    benchmark.pedantic(
        sampler_replays["reference"].sample_starts, (BATCH, LENGTH), rounds=30, warmup_rounds=2
    )


@pytest.fixture(scope="module")
def gather_setup():
    """The C++ replay (64x64 frames) and, for numpy, every stored stack materialised once
    (CAPACITY, 4, 64, 64) = 1.6 GB, with the same window indices."""
    replay = filled_replay("cpp", (64, 64))
    starts = replay.sample_starts(BATCH, LENGTH)
    stacks = np.empty((CAPACITY + 1, 4, 64, 64), np.uint8)
    for chunk in np.array_split(np.arange(CAPACITY + 1), 20):
        stacks[chunk] = replay.read_obs(chunk)
    index = starts[:, None] + np.arange(-1, LENGTH + 1)[None]  # (B, 18): context, window, next obs
    return replay, starts, stacks, index


def record_bandwidth(benchmark, nbytes: int) -> None:
    benchmark.extra_info["MB"] = round(nbytes / 1e6, 1)
    benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.benchmark(group="replay-gather (100, 18, 4, 64, 64) uint8")
def test_replay_gather_cpp(benchmark, gather_setup):
    replay, starts, stacks, index = gather_setup
    out = replay.read_windows(starts, LENGTH)
    benchmark(replay.read_windows, starts, LENGTH, out)
    assert np.array_equal(out["obs"], stacks[index])
    record_bandwidth(benchmark, out["obs"].nbytes)


@pytest.mark.benchmark(group="replay-gather (100, 18, 4, 64, 64) uint8")
def test_replay_gather_numpy_fancy_indexing(benchmark, gather_setup):
    _, _, stacks, index = gather_setup
    obs = benchmark(stacks.__getitem__, index)
    record_bandwidth(benchmark, obs.nbytes)
