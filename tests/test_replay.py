"""The replay (SPEC 6) and its balanced sampler (Eq. 6): the reference against hand-built streams,
the C++ backend against the reference (bit for bit on reads, counters and state), the samplers
of both against softmax(-v / tau) (chi-square), checkpoints, and the error cases."""

import math
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from twm_fast.replay import FastReplay, ReferenceReplay, ReplayFileError, make_replay

BACKENDS = ["reference", "cpp"]
SHAPE = (3, 5)  # small odd frames keep the Python reference fast


# ---- Streams obeying the frame-stack contract, kept whole as ground truth -------------------------


class Stream:
    """o_0 .. o_T and steps (a, r, terminated, truncated) as the env produced them."""

    def __init__(self, seed: int, frame_stack: int = 4, shape=SHAPE):
        self.rng = np.random.default_rng(seed)
        self.frame_stack, self.shape = frame_stack, shape
        self.obs = [self.reset_obs()]
        self.steps = []

    def reset_obs(self) -> np.ndarray:
        return np.repeat(
            self.rng.integers(0, 256, (1, *self.shape), dtype=np.uint8), self.frame_stack, axis=0
        )

    def step(self, p_done: float = 0.15, kind: str | None = None) -> tuple:
        if kind is None:
            kind = (
                "step" if self.rng.random() >= p_done else str(self.rng.choice(["terminated", "truncated"]))
            )
        if kind == "step":
            new = self.rng.integers(0, 256, (1, *self.shape), dtype=np.uint8)
            next_obs = np.concatenate([self.obs[-1][1:], new])
        else:
            next_obs = self.reset_obs()
        # Rewards arrive tanh'd; a float32 value survives both backends' float32 storage exactly.
        step = (
            int(self.rng.integers(6)),
            float(np.float32(np.tanh(self.rng.normal()))),
            kind == "terminated",
            kind == "truncated",
        )
        self.steps.append(step)
        self.obs.append(next_obs)
        return (*step, next_obs)

    def restart(self) -> np.ndarray:
        obs = self.reset_obs()
        if self.steps and not self.steps[-1][2]:
            self.steps[-1] = (*self.steps[-1][:3], True)
        self.obs[-1] = obs
        return obs

    def window(self, s: int, length: int) -> dict[str, np.ndarray]:
        """What read_windows must return for start s, padded at s == 0 as the published code."""
        steps = [self.steps[max(i, 0)] for i in range(s - 1, s + length)]
        return {
            "obs": np.stack([self.obs[max(s - 1, 0)]] + self.obs[s : s + length + 1]),
            "actions": np.array([0 if s == 0 and t == 0 else a for t, (a, *_) in enumerate(steps)], np.int64),
            "rewards": np.array(
                [0.0 if s == 0 and t == 0 else r for t, (_, r, *_) in enumerate(steps)], np.float32
            ),
            "terminated": np.array([x[2] for x in steps]),
            "truncated": np.array([x[3] for x in steps]),
        }


def filled(backend: str, stream: Stream, capacity: int, steps: int, p_done: float = 0.15, **kwargs):
    replay = make_replay(
        backend, capacity=capacity, frame_shape=stream.shape, frame_stack=stream.frame_stack, **kwargs
    )
    replay.add_first(stream.obs[0])
    for _ in range(steps):
        replay.add(*stream.step(p_done))
    return replay


def valid_starts(replay, length: int) -> np.ndarray:
    return replay.visit_counts(length)[0]


def assert_states_equal(a: dict, b: dict, with_rng: bool = False) -> None:
    keys = {k for k in a if with_rng or not k.startswith("rng")}
    assert keys <= b.keys()
    for key in keys:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def set_visits(replay, visits: np.ndarray) -> None:
    """Counters of the stored steps [first_step, total_steps - 1], through a state-dict roundtrip."""
    state = replay.state_dict()
    state["visits"] = np.asarray(visits, np.int64)
    replay.load_state_dict(state)


# ---- Reads: hand-built streams -------------------------------------------------------------------


def const_obs(*frame_ids: int) -> np.ndarray:
    return np.stack([np.full(SHAPE, f, np.uint8) for f in frame_ids])


def hand_built(backend: str, first_done: bool = False):
    """Frames are constant images numbered by id; episode ends at steps 1 (terminated) and 3
    (truncated), or also at step 0 when first_done."""
    replay = make_replay(backend, capacity=100, frame_shape=SHAPE)
    replay.add_first(const_obs(10, 10, 10, 10))
    if first_done:
        replay.add(7, 1.0, True, False, const_obs(15, 15, 15, 15))
        replay.add(1, 0.5, False, False, const_obs(15, 15, 15, 11))
    else:
        replay.add(1, 0.5, False, False, const_obs(10, 10, 10, 11))
    replay.add(2, -0.5, True, False, const_obs(20, 20, 20, 20))
    replay.add(3, 0.25, False, False, const_obs(20, 20, 20, 21))
    replay.add(4, 0.0, False, True, const_obs(30, 30, 30, 30))
    for f in (31, 32, 33, 34):
        prev = replay.read_obs([replay.total_steps])[0, :, 0, 0]
        replay.add(5, 0.125, False, False, const_obs(*prev[1:], f))
    return replay


def frame_ids(obs: np.ndarray) -> list:
    return obs[..., 0, 0].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_hand_built(backend):
    replay = hand_built(backend)
    w = replay.read_windows(np.array([0, 2, 5]), 3)
    assert w["obs"].shape == (3, 5, 4, *SHAPE) and w["obs"].dtype == np.uint8
    # s = 0: the context repeats o_0, action 0, reward 0, flags of step 0.
    assert frame_ids(w["obs"][0]) == [[10] * 4, [10] * 4, [10, 10, 10, 11], [20] * 4, [20, 20, 20, 21]]
    assert w["actions"][0].tolist() == [0, 1, 2, 3]
    assert w["rewards"][0].tolist() == [0.0, 0.5, -0.5, 0.25]
    assert w["terminated"][0].tolist() == [False, False, True, False]
    assert w["truncated"][0].tolist() == [False, False, False, False]
    # s = 2: the context is step 1 (terminated); the stack of o_2 restarts at the reset frame.
    assert frame_ids(w["obs"][1]) == [
        [10, 10, 10, 11],
        [20] * 4,
        [20, 20, 20, 21],
        [30] * 4,
        [30, 30, 30, 31],
    ]
    assert w["actions"][1].tolist() == [2, 3, 4, 5]
    assert w["terminated"][1].tolist() == [True, False, False, False]
    assert w["truncated"][1].tolist() == [False, False, True, False]
    # s = 5: stacks grow back to four distinct frames after the truncation reset.
    assert frame_ids(w["obs"][2]) == [
        [30] * 4,
        [30, 30, 30, 31],
        [30, 30, 31, 32],
        [30, 31, 32, 33],
        [31, 32, 33, 34],
    ]
    assert replay.total_steps == 8 and valid_starts(replay, 3).tolist() == list(range(6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_repeats_flags_of_step_0(backend):
    replay = hand_built(backend, first_done=True)
    w = replay.read_windows(np.array([0]), 2)
    assert w["actions"][0].tolist() == [0, 7, 1]
    assert w["rewards"][0].tolist() == [0.0, 1.0, 0.5]
    assert w["terminated"][0].tolist() == [True, True, False]  # the published code repeats index 0
    assert frame_ids(w["obs"][0]) == [[10] * 4, [10] * 4, [15] * 4, [15, 15, 15, 11]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frame_stack", [1, 3, 4])
@pytest.mark.parametrize("capacity", [1000, 11])
def test_stacks_rebuilt_across_resets(backend, frame_stack, capacity):
    stream = Stream(seed=frame_stack, frame_stack=frame_stack)
    replay = filled(backend, stream, capacity, 97, p_done=0.2)
    readable = np.arange(replay.first_step, replay.total_steps + 1)
    assert np.array_equal(replay.read_obs(readable), np.stack([stream.obs[j] for j in readable]))
    length = 4
    for s in valid_starts(replay, length):
        w = replay.read_windows([s], length)
        for key, want in stream.window(s, length).items():
            assert np.array_equal(w[key][0], want), (s, key)


# ---- The C++ backend equals the reference, bit for bit -------------------------------------------


@pytest.mark.parametrize(
    "capacity, steps, frame_stack, length",
    [
        (1000, 157, 4, 16),  # never wraps
        (13, 157, 4, 3),  # wraps many times
        (37, 200, 3, 5),
        (5, 50, 1, 2),
        (16, 16, 4, 16),  # exactly full: one window
        (16, 17, 4, 16),  # one step over: the window lost its context step, none is valid
    ],
)
def test_cpp_equals_reference(capacity, steps, frame_stack, length):
    reps = [
        filled(b, Stream(seed=capacity + steps, frame_stack=frame_stack), capacity, steps) for b in BACKENDS
    ]
    ref, fast = reps
    for name in ("total_steps", "num_steps", "first_step"):
        assert getattr(ref, name) == getattr(fast, name)
    assert_states_equal(ref.state_dict(), fast.state_dict())
    starts = valid_starts(ref, length)
    assert np.array_equal(starts, valid_starts(fast, length))
    out = {key: np.full_like(a, 77) for key, a in fast.read_windows(starts, length).items()}  # poisoned
    fast.read_windows(starts, length, out=out)
    want = ref.read_windows(starts, length)
    for key in want:
        assert np.array_equal(out[key], want[key]), key
    readable = np.arange(ref.first_step, ref.total_steps + 1)
    assert np.array_equal(ref.read_obs(readable), fast.read_obs(readable))
    for replay in (ref, fast):  # into a poisoned preallocated array
        out = np.full((len(readable), replay.frame_stack, *replay.frame_shape), 77, np.uint8)
        assert replay.read_obs(readable, out=out) is out
        assert np.array_equal(out, ref.read_obs(readable))
        with pytest.raises(ValueError, match="out must be"):
            replay.read_obs(readable, out=out[:-1] if len(readable) > 1 else out.astype(np.int16))
    # Counters follow the same draws (applied through mark_visited).
    for _ in range(5):
        if len(starts) >= 3:
            fast.mark_visited(ref.sample_starts(3, length))
    assert np.array_equal(ref.visit_counts(length)[1], fast.visit_counts(length)[1])


# ---- Eq. 6: the samplers against softmax(-v / tau) -------------------------------------------------


def softmax_probs(visits: np.ndarray, temperature: float) -> np.ndarray:
    if math.isinf(temperature):
        return np.full(len(visits), 1 / len(visits))
    logits = -(visits - visits.min()) / temperature
    p = np.exp(logits)
    return p / p.sum()


def assert_chisquare(observed: np.ndarray, p: np.ndarray, min_pvalue: float = 1e-3) -> None:
    """Pearson chi-square; bins expecting < 5 draws are pooled, and a pool expecting < 5 must see
    (almost) nothing (e^-100-probability entries are never drawn)."""
    n = observed.sum()
    expected = p * n
    small = expected < 5
    obs_bins, exp_bins = list(observed[~small]), list(expected[~small])
    if expected[small].sum() >= 5:
        obs_bins.append(observed[small].sum())
        exp_bins.append(expected[small].sum())
    else:
        assert observed[small].sum() <= expected[small].sum() + 5 * math.sqrt(expected[small].sum()) + 2
    exp_bins = np.array(exp_bins) * (np.sum(obs_bins) / np.sum(exp_bins))
    assert chisquare(obs_bins, exp_bins).pvalue > min_pvalue


def draw_frequencies(replay, length: int, draws: int) -> np.ndarray:
    starts = valid_starts(replay, length)
    hits = np.zeros(len(starts), np.int64)
    for _ in range(draws):
        hits[replay.sample_starts(1, length, update_visits=False)[0] - starts[0]] += 1
    return hits


VISIT_PATTERNS = {
    "random": lambda rng, n: rng.integers(0, 60, n),
    "old_next_to_fresh": lambda rng, n: np.where(
        np.arange(n) < n - 8, 60 + rng.integers(0, 10, n), rng.integers(0, 3, n)
    ),
    "huge_counts": lambda rng, n: 10**6 + rng.integers(0, 12, n),  # all far above 0: weights re-centre
    "huge_old_tiny_tau": lambda rng, n: np.where(np.arange(n) < n - 8, 5000, rng.integers(0, 4, n)),
    # Fresh steps (v = 0) only among the newest, which are no valid start for L = 3: every
    # candidate weight underflows against them, so the C++ sampler re-centres within the batch.
    "huge_valid_fresh_excluded": lambda rng, n: np.where(
        np.arange(n) < n - 2, 3000 + rng.integers(0, 6, n), 0
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pattern, temperature",
    [
        ("random", 20.0),
        ("random", 3.0),
        ("old_next_to_fresh", 20.0),
        ("huge_counts", 2.0),
        ("huge_old_tiny_tau", 0.5),
        ("huge_valid_fresh_excluded", 2.0),
        ("random", math.inf),
    ],
)
def test_eq6_softmax_chisquare(backend, pattern, temperature):
    length = 3
    replay = filled(backend, Stream(seed=5), 43, 43, temperature=temperature)
    rng = np.random.default_rng(1)
    set_visits(replay, VISIT_PATTERNS[pattern](rng, replay.num_steps))
    visits = replay.visit_counts(length)[1]
    hits = draw_frequencies(replay, length, 20000)
    assert_chisquare(hits, softmax_probs(visits, temperature))
    assert np.array_equal(replay.visit_counts(length)[1], visits)  # update_visits=False counted nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_fresh_steps_after_huge_counts(backend):
    """New steps arrive with v = 0 next to entries visited far more often than e^709 allows at
    this tau: the fresh ones are drawn uniformly, the old never (their softmax weight is e^-2000)."""
    stream = Stream(seed=9)
    replay = filled(backend, stream, 40, 30, temperature=2.0)
    set_visits(replay, np.full(replay.num_steps, 4000))
    for _ in range(10):
        replay.add(*stream.step())
    length = 2
    starts, visits = replay.visit_counts(length)
    hits = draw_frequencies(replay, length, 8000)
    assert np.array_equal(visits == 0, starts >= 30)
    assert_chisquare(hits, softmax_probs(visits, 2.0))
    assert hits[visits > 0].sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_replacement_joint_law(backend):
    """B = 2 draws successively without replacement: P(i, j) = p_i p_j / (1 - p_i), the law of numpy's
    choice(replace=False, p) and of torch.multinomial used by the published code."""
    replay = filled(backend, Stream(seed=2), 20, 6, temperature=2.0)
    set_visits(replay, [0, 1, 2, 3, 5, 0])
    starts, visits = replay.visit_counts(2)
    p = softmax_probs(visits, 2.0)
    n = len(p)
    pairs = np.zeros((n, n), np.int64)
    for _ in range(12000):
        i, j = replay.sample_starts(2, 2, update_visits=False) - starts[0]
        pairs[i, j] += 1
    joint = p[:, None] * p[None, :] / (1 - p[:, None])
    off_diagonal = ~np.eye(n, dtype=bool)
    assert np.trace(pairs) == 0
    assert_chisquare(pairs[off_diagonal], joint[off_diagonal])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_distinct_and_counted(backend):
    replay = filled(backend, Stream(seed=4), 64, 64)
    length = 5
    starts = valid_starts(replay, length)
    total = np.zeros(len(starts), np.int64)
    for batch in (len(starts), 17, 1, 59):
        for _ in range(20):
            drawn = replay.sample_starts(batch, length)
            assert drawn.dtype == np.int64 and len(np.unique(drawn)) == batch
            assert np.all(np.isin(drawn, starts))
            np.add.at(total, drawn - starts[0], 1)
    visits = replay.visit_counts(length)[1]
    assert np.array_equal(visits, total)
    assert len(replay.sample_starts(0, length)) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_starts_and_obs_indices(backend):
    replay = filled(backend, Stream(seed=6), 50, 120)
    length = 7
    lo, hi = replay.first_step + 1, replay.total_steps - length
    before = replay.visit_counts(length)[1]
    offsets = set()
    for _ in range(30):
        starts = replay.uniform_starts(length)
        offset = (starts[0] - lo) % length
        offsets.add(int(offset))
        assert starts.dtype == np.int64
        assert sorted(starts.tolist()) == list(range(lo + offset, hi + 1, length))
    assert len(offsets) > 3  # random offsets in [0, length)
    assert np.array_equal(replay.visit_counts(length)[1], before)
    indices = replay.random_obs_indices(5000)
    assert (
        indices.dtype == np.int64
        and indices.min() == replay.first_step
        and indices.max() == replay.total_steps
    )
    replay.read_obs(indices[:50])


@pytest.mark.parametrize("backend", BACKENDS)
def test_restart_episode(backend):
    stream = Stream(seed=8)
    replay = filled(backend, stream, 30, 12, p_done=0.0)
    replay.restart_episode(stream.restart())
    replay.add(*stream.step(p_done=0.0))
    w = replay.read_windows([9], 3)
    for key, want in stream.window(9, 3).items():
        assert np.array_equal(w[key][0], want), key
    assert w["truncated"][0].tolist() == [False, False, False, True]  # step 11 ended by the restart


# ---- Hypothesis: both backends under the same random sequences of operations ----------------------

ADD = st.tuples(st.just("add"), st.sampled_from(["step", "step", "step", "terminated", "truncated"]))
OPS = st.one_of(
    st.tuples(st.just("first")),
    ADD,
    ADD,  # twice as likely as the others, so the small rings wrap
    st.tuples(st.just("sample"), st.integers(0, 4), st.integers(1, 4)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("roundtrip"), st.booleans()),
)


def state_roundtrip(replay, config: dict):
    new = type(replay)(**config)
    new.load_state_dict(replay.state_dict())
    assert_states_equal(replay.state_dict(), new.state_dict(), with_rng=True)
    return new


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 9),
    frame_stack=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(OPS, max_size=80),
)
def test_backends_agree_on_random_operations(capacity, frame_stack, seed, ops):
    config = dict(capacity=capacity, frame_shape=(2, 3), frame_stack=frame_stack, seed=seed)
    ref, fast = ReferenceReplay(**config), FastReplay(**config)
    stream = Stream(seed, frame_stack, (2, 3))
    started = False
    with tempfile.TemporaryDirectory() as tmp:
        for op in ops:
            if op[0] == "first":  # once after creation; a second call is an error
                for replay in (ref, fast):
                    if started:
                        with pytest.raises(ValueError, match="already called"):
                            replay.add_first(stream.obs[0])
                    else:
                        replay.add_first(stream.obs[0])
                started = True
            elif op[0] in ("add", "restart") and not started:
                obs = stream.reset_obs()
                for replay in (ref, fast):
                    with pytest.raises(ValueError, match="before add_first"):
                        replay.add(0, 0.0, False, True, obs) if op[0] == "add" else replay.restart_episode(
                            obs
                        )
            elif op[0] == "add":
                step = stream.step(kind=op[1])
                ref.add(*step)
                fast.add(*step)
            elif op[0] == "restart":
                obs = stream.restart()
                ref.restart_episode(obs)
                fast.restart_episode(obs)
            elif op[0] == "sample":
                _, batch, length = op
                try:
                    starts = ref.sample_starts(batch, length)
                except ValueError:
                    with pytest.raises(ValueError, match="need at least"):
                        fast.sample_starts(batch, length)
                else:
                    own = fast.sample_starts(batch, length, update_visits=False)
                    assert len(set(own.tolist())) == batch and set(own.tolist()) <= set(
                        valid_starts(fast, length)
                    )
                    fast.mark_visited(starts)  # the same draws for both counters
            elif op[1]:  # roundtrip through files
                ref.save(f"{tmp}/ref.replay")
                fast.save(f"{tmp}/fast.replay")
                ref, fast = ReferenceReplay.load(f"{tmp}/ref.replay"), FastReplay.load(f"{tmp}/fast.replay")
            else:  # roundtrip through state dicts, into fresh replays seeded differently
                ref, fast = (state_roundtrip(replay, {**config, "seed": seed + 1}) for replay in (ref, fast))
            assert_states_equal(ref.state_dict(), fast.state_dict())
    if started:
        assert np.array_equal(
            fast.read_obs(np.arange(fast.first_step, fast.total_steps + 1)),
            np.stack(stream.obs[fast.first_step :]),
        )
        for s in valid_starts(fast, 2):
            w = fast.read_windows([s], 2)
            for key, want in stream.window(s, 2).items():
                assert np.array_equal(w[key][0], want), key


# ---- Checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_roundtrip(backend, tmp_path):
    replay = filled(backend, Stream(seed=3), 20, 47, temperature=5.0, seed=123)
    replay.sample_starts(4, 3)
    path = tmp_path / "replay.bin"
    replay.save(str(path))
    loaded = type(replay).load(str(path))
    assert loaded.temperature == 5.0 and loaded.capacity == 20
    assert_states_equal(replay.state_dict(), loaded.state_dict(), with_rng=True)
    # The RNG state travels too: both continue with the same draws.
    assert np.array_equal(replay.sample_starts(5, 3), loaded.sample_starts(5, 3))
    assert np.array_equal(replay.random_obs_indices(9), loaded.random_obs_indices(9))
    inf = make_replay(backend, capacity=4, frame_shape=SHAPE, temperature=math.inf)
    inf.save(str(path))
    assert math.isinf(type(inf).load(str(path)).temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_are_refused(backend, tmp_path):
    replay = filled(backend, Stream(seed=3), 20, 30)
    cls = type(replay)
    good = tmp_path / "good.replay"
    replay.save(str(good))
    data = good.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "truncated_header": (data[:15], "truncated"),
        "corrupted": (data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "checksum mismatch"),
        "foreign": (b"PK\x03\x04 this is a zip, not a replay" * 10, "not a twm-fast replay file"),
        "empty": (b"", "not a twm-fast replay file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.replay"
        path.write_bytes(content)
        with pytest.raises(ReplayFileError, match=message) as error:
            cls.load(str(path))
        assert str(path) in str(error.value)
    other = ReferenceReplay if cls is FastReplay else FastReplay
    with pytest.raises(ValueError, match="load it with the backend that saved it"):
        other.load(str(good))


# ---- Errors, not crashes ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_cases(backend):
    for capacity in (0, -3):
        with pytest.raises(ValueError, match="capacity"):
            make_replay(backend, capacity=capacity)
    with pytest.raises(ValueError, match="temperature"):
        make_replay(backend, capacity=5, temperature=0.0)
    replay = make_replay(backend, capacity=10, frame_shape=SHAPE)
    obs = np.zeros((4, *SHAPE), np.uint8)
    with pytest.raises(ValueError, match=r"add\(\) before add_first\(\)"):
        replay.add(0, 0.0, True, False, obs)
    with pytest.raises(ValueError, match="uint8"):
        replay.add_first(obs.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        replay.add_first(np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="copies of one frame"):
        replay.add_first(np.arange(4, dtype=np.uint8)[:, None, None] * np.ones(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="readable observations are none"):
        replay.read_obs([0])
    replay.add_first(obs)
    with pytest.raises(ValueError, match="already called"):
        replay.add_first(obs)
    with pytest.raises(ValueError, match="shift in exactly one new frame"):
        replay.add(0, 0.0, False, False, np.full((4, *SHAPE), 9, np.uint8))
    with pytest.raises(ValueError, match="copies of one frame"):
        replay.add(
            0, 0.0, False, True, np.arange(4, dtype=np.uint8)[:, None, None] * np.ones(SHAPE, np.uint8)
        )
    assert replay.total_steps == 0  # failed inserts change nothing
    stream = Stream(seed=1)
    replay = filled(backend, stream, 10, 25)
    with pytest.raises(ValueError, match=r"need at least 9 valid window starts, have 7"):
        replay.sample_starts(9, 3)
    with pytest.raises(ValueError, match=r"valid starts are \[16, 22\]"):
        replay.read_windows([15], 3)
    with pytest.raises(ValueError, match=r"valid starts are \[16, 22\]"):
        replay.read_windows([23], 3)
    with pytest.raises(ValueError, match=r"readable observations are \[15, 25\]"):
        replay.read_obs([14])
    with pytest.raises(ValueError, match=r"readable observations are \[15, 25\]"):
        replay.read_obs([26])
    with pytest.raises(ValueError, match="is not stored"):
        replay.mark_visited([25])
    with pytest.raises(ValueError, match="length must be >= 1"):
        replay.sample_starts(1, 0)
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        replay.sample_starts(-1, 3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        replay.random_obs_indices(-2)
    with pytest.raises(ValueError, match="out"):
        replay.read_windows([16], 3, out={"obs": np.empty((1, 5, 4, *SHAPE), np.uint8)})
    with pytest.raises(ValueError, match="state dict has capacity"):
        make_replay(backend, capacity=11, frame_shape=SHAPE).load_state_dict(replay.state_dict())
    with pytest.raises(ValueError, match="unknown replay backend"):
        make_replay("gpu", capacity=3)


def test_cpp_reads_while_another_thread_appends():
    """read_windows releases the GIL (prefetching the next batch while Python works); the core's
    mutex keeps concurrent appends and reads consistent."""
    stream = Stream(seed=12)
    replay = filled("cpp", stream, 5000, 200)
    errors = []

    def prefetch():
        try:
            for _ in range(200):
                starts = replay.sample_starts(8, 16)
                w = replay.read_windows(starts, 16)
                for b, s in enumerate(starts):
                    assert np.array_equal(w["obs"][b], stream.window(s, 16)["obs"])
        except Exception as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=prefetch)
    thread.start()
    for _ in range(1000):
        replay.add(*stream.step())
    thread.join()
    assert not errors, errors
