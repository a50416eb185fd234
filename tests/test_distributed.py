"""Multi-process start-up settings: explicit values win, partial settings are refused with the names, and a plain
run stays single-process. (The 2-process run itself is tests/test_multiprocess.py.)"""

import pytest

from cosmos_jax import distributed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in (*distributed.ENV, "SLURM_NTASKS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_nothing_set_is_single_process():
    assert distributed._explicit(None, None, None) is None
    assert not distributed._cluster()
    assert distributed.maybe_initialize() is False


def test_flags_and_environment(monkeypatch):
    assert distributed._explicit("host:1234", 4, 2) == ("host:1234", 4, 2)
    monkeypatch.setenv("COSMOS_JAX_COORDINATOR", "node0:99")
    monkeypatch.setenv("COSMOS_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("COSMOS_JAX_PROCESS_ID", "1")
    assert distributed._explicit(None, None, None) == ("node0:99", 2, 1)
    assert distributed._explicit("other:1", None, 0) == ("other:1", 2, 0)  # flags override the environment


@pytest.mark.parametrize("args, msg", [
    (("host:1", None, None), "must be given together"),
    (("host:1", 2, 2), r"process_id=2 must be in \[0, num_processes=2\)"),
    (("host", 2, 0), "expected host:port"),
    (("host:1", "two", 0), "must be integers"),
])
def test_bad_settings_are_explained(args, msg):
    with pytest.raises(ValueError, match=msg):
        distributed._explicit(*args)


def test_slurm_with_several_tasks_is_a_cluster(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed._cluster()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed._cluster()
