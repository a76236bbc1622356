"""The training loop runs on the C++ replay by default and on the numpy reference when asked;
for the same start indices both give the trainer identical batches."""
import numpy as np
import torch

from twm_fast.config import make_config
from twm_fast.replay import FastReplay, ReferenceReplay
from twm_fast.train import Trainer, to_torch

TINY = dict(env_steps=400, prefill_steps=300, pretrain_budget=3000, total_budget=14520, imagine_batch_size=16,
            eval_episodes=1, final_eval_episodes=1, pretrain_obs_batch_size=64)


def prefilled(tmp_path, backend):
    config = make_config("quick", replay_backend=backend, **TINY)
    trainer = Trainer(config, tmp_path / backend, torch.device("cpu"), show_progress=False)
    trainer.prefill()
    return trainer


def test_default_backend_is_cpp():
    assert make_config("paper").replay_backend == "cpp"


def test_backends_give_identical_batches(tmp_path):
    fast, ref = prefilled(tmp_path, "cpp"), prefilled(tmp_path, "reference")
    assert isinstance(fast.replay, FastReplay) and isinstance(ref.replay, ReferenceReplay)
    assert fast.replay.total_steps == ref.replay.total_steps == 300
    L = fast.config.wm_sequence_length
    starts = fast.replay.sample_starts(fast.config.wm_batch_size, L)
    a = to_torch(fast.replay.read_windows(starts, L), torch.device("cpu"))
    b = to_torch(ref.replay.read_windows(starts, L), torch.device("cpu"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    indices = ref.replay.random_obs_indices(32)
    np.testing.assert_array_equal(fast.replay.read_obs(indices), ref.replay.read_obs(indices))
    # The trainer's one training step runs on either backend.
    for trainer in (fast, ref):
        trainer.train_step()
        assert trainer.counters["train_steps"] == 1


def test_window_reader_matches_direct_reads(tmp_path):
    """Preallocated (pinned on a GPU) buffers give the same batches and restart observations as fresh
    reads, batch after batch."""
    from twm_fast.train import WindowReader

    for backend in ("cpp", "reference"):
        trainer = prefilled(tmp_path / "reader", backend)
        L, B = trainer.config.wm_sequence_length, trainer.config.wm_batch_size
        reader = WindowReader(trainer.replay, B, L, 5, torch.device("cpu"))
        for _ in range(3):
            starts = trainer.replay.sample_starts(B, L, update_visits=False)
            restarts = trainer.replay.random_obs_indices(5)
            batch, restart_obs = reader.read(starts, restarts)
            expected = to_torch(trainer.replay.read_windows(starts, L), torch.device("cpu"))
            assert batch.keys() == expected.keys()
            for key in expected:
                assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), key
            assert torch.equal(restart_obs, torch.as_tensor(trainer.replay.read_obs(restarts)))
