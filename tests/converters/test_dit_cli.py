"""The DiT converters' command lines: arguments, exit status and messages (the work is cosmos_jax/weights/)."""

import os
import subprocess
import sys

import torch

from tests.conftest import PARITY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [f"--config.model.{k}={v}" for k, v in (("model_channels", 128), ("num_blocks", 2), ("num_heads", 2),
                                               ("adaln_lora_dim", 32), ("crossattn_emb_channels", 32))]


def parity():
    return torch.load(PARITY / "dit_tiny.pt", weights_only=True)


def test_cli_exit_status_and_message(tmp_path):
    sd = dict(parity())
    sd.pop("net.x_embedder.proj.1.weight")
    torch.save(sd, tmp_path / "bad.pt")
    cmd = [sys.executable, "-m", "converters.dit_to_orbax", f"--src={tmp_path / 'bad.pt'}", f"--dst={tmp_path / 'o'}",
           "--config=configs/demo.py", *TINY]
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "missing key net.x_embedder.proj.1.weight" in bad.stderr
    cmd[3] = f"--src={PARITY / 'dit_tiny.pt'}"
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # an existing conversion is not clobbered


def test_orbax_to_pt_cli_writes_model_pt_and_names_bad_input(tmp_path):
    conv = [sys.executable, "-m", "converters.dit_to_orbax", f"--src={PARITY / 'dit_tiny.pt'}",
            f"--dst={tmp_path / 'o'}", "--config=configs/demo.py", *TINY]
    assert subprocess.run(conv, cwd=ROOT, capture_output=True, text=True).returncode == 0
    cmd = [sys.executable, "-m", "converters.orbax_to_pt", f"--src={tmp_path / 'o'}", f"--dst={tmp_path / 'pt'}"]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.splitlines()[0] == str(tmp_path / "pt" / "model.pt")
    out, src = torch.load(tmp_path / "pt" / "model.pt", weights_only=True), parity()
    assert list(out) == list(src) and all(torch.equal(out[k], src[k]) for k in src)
    cmd[3] = f"--src={tmp_path / 'nothing'}"
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "neither a job directory with orbax/<step>/ nor converted base weights" in bad.stderr


def test_keys_cli_prints_only_the_table():
    out = subprocess.run([sys.executable, "-m", "converters.keys", "--config=configs/waymo.py:v2w"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 574
    assert all(len(line.split("\t")) == 2 and all(p.isdigit() for p in line.split("\t")[1].split(","))
               for line in lines)
    assert lines[0] == "net.x_embedder.proj.1.weight\t4096,96"
