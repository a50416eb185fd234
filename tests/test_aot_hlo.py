"""scripts/aot_hlo.py traces the step on the CPU for the cuda platform: the lowered module keeps the offloaded
state's host memory kind (the GPU compile itself, and the cuDNN attention it lowers by default, need JAX's CUDA
plugin, which CI does not install)."""

import pytest

from scripts import aot_hlo
from tests.test_offload import BOTH, tiny


def test_lowered_for_cuda_on_the_cpu_keeps_host_memory():
    c = tiny(BOTH)
    c.offload_overlap = True
    c.model.attention_impl = "xla"  # 'auto' would pick cuDNN, as on a GPU: CI's JAX has no cuDNN to lower it with
    lowered, info = aot_hlo.lower(c)
    text = lowered.as_text()
    assert info["cfg"].num_blocks == 3
    assert "pinned_host" in text  # the moments and EMA stay in host memory
    plain = tiny(())
    plain.model.attention_impl = "xla"
    assert "pinned_host" not in aot_hlo.lower(plain)[0].as_text()


def test_auto_attention_is_lowered_as_on_a_gpu():
    c = tiny(BOTH)
    try:
        aot_hlo.lower(c)
    except RuntimeError as e:  # CI's JAX: no cuDNN to lower the kernel with
        assert "cudnn" in str(e).lower()
    assert c.model.attention_impl == "cudnn"


def test_unknown_target_names_the_known_ones():
    with pytest.raises(ValueError, match=r"--target='a100': expected one of \['h100', 'h200'\]"):
        aot_hlo.topology_devices("a100")
