"""Multi-process and changed-mesh training through the CLI, on CPU:

- 2 processes (coordinator on localhost, 2 CPU devices each) train 2 steps on a (fsdp=2, context=2) mesh, save,
  export the `.pt` files and validate: the per-step losses equal those of 1 process driving the same 4 devices; then
  2 processes restore that checkpoint together and train step 3, again as 1 process does;
- a job saved on 4 devices resumes on 2 (fsdp=2): at the same global batch it continues with the losses of the
  uninterrupted 4-device job.
"""

import os
import socket
import subprocess

import numpy as np
import pytest

from tests.test_train import args, step_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH_FC = '--config.mesh=(("data", 1), ("fsdp", 2), ("context", 2))'
MESH_F = '--config.mesh=(("data", 1), ("fsdp", 2), ("context", 1))'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(data, out, devices: int, processes: int, *extra):
    """Start `processes` training processes with `devices` CPU devices each; wait; return their outputs."""
    env = {**os.environ, "OUTPUT_ROOT": str(out), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = args(data, "--config.batch_size=2", *extra)
    if processes > 1:
        port = free_port()
        cmds = [cmd + [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                       f"--process_id={i}"] for i in range(processes)]
    else:
        cmds = [cmd]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, so[-2000:] + se[-4000:]
    return outs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.data import fixtures as fx

    root = fx.build(str(tmp_path_factory.mktemp("ds")), clips=(12, 10))
    fx.build(os.path.join(root, "heldout"), clips=(10,))
    return root


@pytest.fixture(scope="module")
def four_devices(data, tmp_path_factory):
    """The reference: 1 process, 4 devices, (fsdp=2, context=2), 4 steps."""
    out = tmp_path_factory.mktemp("ref")
    launch(data, out, 4, 1, MESH_FC, "--config.max_iter=4", "--config.samples.enabled=False")
    return step_metrics(out)


def test_two_processes_train_like_one(data, four_devices, tmp_path):
    launch(data, tmp_path, 2, 2, MESH_FC, "--config.max_iter=2")
    got = step_metrics(tmp_path)
    assert sorted(got) == [1, 2]
    for s in (1, 2):
        assert got[s][1] == four_devices[s][1]  # the same data windows
        np.testing.assert_allclose(got[s][0], four_devices[s][0], rtol=1e-5)
    ck = os.path.join(tmp_path, "posttraining/demo/demo_single2multiview/checkpoints")
    assert sorted(os.listdir(ck)) == ["iter_000000002_ema_model.pt", "iter_000000002_reg_model.pt"]
    samples = os.path.join(tmp_path, "posttraining/demo/demo_single2multiview/samples")
    assert any(n.endswith(".mp4") for n in os.listdir(samples))
    launch(data, tmp_path, 2, 2, MESH_FC, "--config.max_iter=3", "--config.samples.enabled=False")  # restore
    got = step_metrics(tmp_path)
    assert got[3][1] == four_devices[3][1]
    np.testing.assert_allclose(got[3][0], four_devices[3][0], rtol=1e-5)


def test_resume_on_fewer_devices(data, four_devices, tmp_path):
    launch(data, tmp_path, 4, 1, MESH_FC, "--config.max_iter=2", "--config.samples.enabled=False")
    launch(data, tmp_path, 2, 1, MESH_F, "--config.max_iter=4", "--config.samples.enabled=False")
    got = step_metrics(tmp_path)
    assert sorted(got) == [1, 2, 3, 4]
    for s in (3, 4):
        assert got[s][1] == four_devices[s][1]
        np.testing.assert_allclose(got[s][0], four_devices[s][0], rtol=1e-5)
