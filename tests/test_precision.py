"""The precision policy (config.matmul_precision): resolved per device, applied to cuBLAS, cuDNN and the
kernels alike, and part of every CUDA-graph key."""
import pytest
import torch

from twm_fast.config import make_config
from twm_fast.cuda_graph import CapturedCall
from twm_fast.kernels.runtime import ieee_fp32
from twm_fast.precision import apply_matmul_precision, numerics_key, resolve_matmul_precision


@pytest.fixture(autouse=True)
def _restore_precision():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def test_auto_is_tf32_on_a_gpu_and_ieee_elsewhere():
    assert resolve_matmul_precision("auto", torch.device("cuda", 0)) == "high"
    assert resolve_matmul_precision("auto", torch.device("cpu")) == "highest"
    for name in ("high", "highest", "published"):
        assert resolve_matmul_precision(name, torch.device("cpu")) == name
    with pytest.raises(ValueError, match="matmul_precision"):
        resolve_matmul_precision("medium", torch.device("cpu"))


def test_one_setting_reaches_cublas_cudnn_and_the_kernels():
    apply_matmul_precision("high")
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    assert not ieee_fp32(torch.float32)
    apply_matmul_precision("highest")
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    assert ieee_fp32(torch.float32) and not ieee_fp32(torch.bfloat16)
    # As the published code ran (PyTorch 1.12's defaults): IEEE matmuls and kernels, TF32 convolutions.
    apply_matmul_precision("published")
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32
    assert ieee_fp32(torch.float32)
    with pytest.raises(ValueError, match="resolve"):
        apply_matmul_precision("auto")


def test_config_rejects_an_unknown_precision():
    assert make_config("quick").matmul_precision == "auto"
    assert make_config("published").matmul_precision == "published"
    with pytest.raises(ValueError, match="matmul_precision"):
        make_config("quick", matmul_precision="tf32")


def test_a_cuda_graph_is_keyed_by_the_precision_and_the_autocast_state():
    args = (torch.zeros(3, 4),)
    apply_matmul_precision("high")
    high = CapturedCall._key(args)
    apply_matmul_precision("highest")
    highest = CapturedCall._key(args)
    assert high != highest
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = numerics_key("cpu")
    assert autocast != numerics_key("cpu")
    assert CapturedCall._key(args) == highest  # same inputs, same numerics: the same graph
