# The Triton interpreter must be chosen before any kernel module is imported: it lets the kernels
# run (slowly, tiny shapes only) on a CPU, so CI compares every kernel with its twin. With a GPU the
# kernels are compiled for real (and the tests marked `gpu` run at full size).
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
