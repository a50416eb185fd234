"""Test setup: CPU only, 8 host devices for the multi-device tests, set before jax is imported anywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# One persistent XLA compilation cache for the whole session, inherited by the CLI subprocesses: the train, resume
# and mesh tests compile the same tiny steps many times (compiles under 1 s are not cached, JAX's default).
# The process that makes it (pytest's, or xdist's controller: the workers inherit it) removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cosmos_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"])

import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

PARITY = pathlib.Path(__file__).parent / "data" / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    return PARITY


def tiny_dit_config(**overrides):
    """The DiTConfig of the parity reference (upstream's net_kwargs at a tiny width), fp32, XLA attention."""
    from cosmos_jax.models.dit import DiTConfig

    kw = json.loads((PARITY / "dit_tiny_config.json").read_text())["net_kwargs"]
    fields = set(DiTConfig.__dataclass_fields__)
    base = {k: v for k, v in kw.items() if k in fields}
    base.update(dtype="float32", attention_impl="xla")
    base.update(overrides)
    return DiTConfig(**base)


def tiny_experiment_config():
    """configs/demo.py with the parity reference's network (for converter and CLI tests)."""
    from configs import demo

    c = demo.get_config()
    kw = json.loads((PARITY / "dit_tiny_config.json").read_text())["net_kwargs"]
    for k in list(c.model.keys()):
        if k in kw:
            c.model[k] = kw[k]
    return c
