"""The seed's real path end to end, as a user runs it, each phase timed with its peak host memory.

    python scripts/gpu_e2e.py --work DIR [--size 7b|tiny] [--stages a,b,...] [--mode lora|full] [--blocks N]

Stages (each one a user command in its own process, in this order):
  data      python -m cosmos_jax.data.synthetic: 2 clips + held-out, 60 frames, rendered small (resized by the
            loader to the config's video_size)
  validate  python -m cosmos_jax.data.validate (must say OK)
  make_pt   scripts/make_random_pt.py: an upstream-layout .pt of a random init (bf16)
  convert   python -m converters.dit_to_orbax (then the .pt is deleted: the 64 GB disk)
  train1    python -m cosmos_jax.train from those base weights: saves at steps 1 and 2 with .pt export,
            validation loss and samples; killed with SIGKILL while the export of step 2 is being written
  train2    the same command again: resumes, writes the interrupted export, finishes
  generate  python -m cosmos_jax.generate --checkpoint JOB (3 views, few sampler steps)
  export    the job's .pt files load with torch.load(weights_only=True, mmap=True): upstream keys; then they are
            deleted and python -m converters.orbax_to_pt writes them again from the job, checked the same way
  loader    scripts/bench_loader.py at the seed shape with 2, 8 and 16 workers
Results accumulate in DIR/e2e.json (stages can be run by several calls); --result writes the final JSON.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("work", "/tmp/cosmos_jax_e2e", "working folder (data, weights, jobs)")
flags.DEFINE_enum("size", "7b", ["7b", "tiny"], "7b: configs/waymo.py at the seed shape; tiny: a CPU dry run")
flags.DEFINE_enum("mode", "lora", ["lora", "full"], "LoRA or full fine-tune")
flags.DEFINE_integer("blocks", 0, "network blocks (0: the config's)")
flags.DEFINE_string("stages", "data,validate,make_pt,convert,train1,train2,generate,export", "stages to run")
flags.DEFINE_string("result", "", "write the accumulated results here as the final JSON")
flags.DEFINE_integer("timeout", 560, "seconds per stage")
flags.DEFINE_string("mirror", "", "also copy the results and logs here after each stage")
F = flags.FLAGS
LORA = ["--config.lora.rank=16", "--config.lora.alpha=16",
        "--config.lora.targets=('to_q','to_k','to_v','to_out','layer1','layer2')"]


def config_args(size: str, data: str, blocks: int) -> list[str]:
    if size == "tiny":
        args = ["--config=configs/demo.py", "--config.model.crossattn_emb_channels=8",
                "--config.data.video_size=(16,32)", "--config.model.num_blocks=2", "--config.model.model_channels=64",
                "--config.data.num_frames=9",
                "--config.tokenizer.pixel_chunk_duration=9"]
    else:
        args = ["--config=configs/waymo.py", "--config.tokenizer.name=haar"]
    if blocks:
        args.append(f"--config.model.num_blocks={blocks}")
    return args + [f"--config.data.dataset_dir={data}"]


def run(name: str, cmd: list[str], log_dir: str, env=None, kill_when=None) -> dict:
    """Run one stage; wall time, exit code and the child's peak RSS (wait4); optionally SIGKILL it once
    `kill_when()` is true (polled every 0.2 s)."""
    log_path = os.path.join(log_dir, f"{name}.log")
    t = time.time()
    killed, status, usage = False, None, None
    with open(log_path, "w") as logf:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        while True:  # reap with wait4 (not Popen.poll) to get this child's own rusage
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if (kill_when is not None and not killed and kill_when()) or time.time() - t > F.timeout:
                os.kill(p.pid, signal.SIGKILL)
                killed = kill_when is not None and time.time() - t <= F.timeout
            time.sleep(0.2)
        rc = p.returncode = os.waitstatus_to_exitcode(status)
    out = {"seconds": round(time.time() - t, 1), "rc": rc, "killed": killed, "log": log_path}
    out["peak_rss_gb"] = round(usage.ru_maxrss / 2**20, 2)
    tail = open(log_path).read()[-1500:]
    print(f"== {name}: {out}\n{tail}", flush=True)
    return out


def job_dir(work: str) -> str:
    return os.path.join(work, "jobs", "posttraining", "e2e", F.mode)


def main(argv):
    del argv
    work = os.path.abspath(F.work)
    os.makedirs(work, exist_ok=True)
    state_path = os.path.join(work, "e2e.json")
    res = json.load(open(state_path)) if os.path.isfile(state_path) else {"stages": {}}
    data = os.path.join(work, "data")
    base, pt = os.path.join(work, f"base_{F.mode}"), os.path.join(work, f"random_{F.mode}.pt")
    cfg = config_args(F.size, data, F.blocks)
    py = sys.executable
    jdir = job_dir(work)
    train_cmd = [py, "-m", "cosmos_jax.train", *cfg, "--noprogress", f"--config.checkpoint.load_path={base}",
                 "--config.job.group=e2e", f"--config.job.name={F.mode}", "--config.max_iter=2",
                 "--config.checkpoint.save_iter=1", "--config.checkpoint.export_max_to_keep=1",
                 "--config.samples.num_steps=2", "--config.log_every=1", "--config.data.num_workers=8",
                 *(LORA if F.mode == "lora" else [])]
    env = {"OUTPUT_ROOT": os.path.join(work, "jobs")}
    for stage in F.stages.split(","):
        if stage == "data":
            frames = "60" if F.size == "7b" else "14"
            r = run(stage, [py, "-m", "cosmos_jax.data.synthetic", "--out", data, "--clips", "2", "--frames", frames,
                            "--embed_dim", "1024" if F.size == "7b" else "8"], work)
        elif stage == "validate":
            r = run(stage, [py, "-m", "cosmos_jax.data.validate", *cfg], work)
        elif stage == "make_pt":
            r = run(stage, [py, "scripts/make_random_pt.py", *cfg, f"--dst={pt}"], work)
        elif stage == "convert":
            r = run(stage, [py, "-m", "converters.dit_to_orbax", *cfg, f"--src={pt}", f"--dst={base}",
                            "--overwrite"], work)
            if r["rc"] == 0:
                os.remove(pt)
        elif stage == "train1":  # killed while the second (last) export is being written
            def exporting():
                return bool(glob.glob(os.path.join(jdir, "checkpoints", "iter_000000002_*.pt.tmp-*")))
            r = run(stage, train_cmd, work, env, kill_when=exporting)
            r["ok"] = r["killed"]
        elif stage == "train2":
            r = run(stage, train_cmd, work, env)
            summary = os.path.join(jdir, "summary.json")
            if os.path.isfile(summary):
                r["summary"] = json.load(open(summary))
        elif stage == "generate":
            clip = sorted(glob.glob(os.path.join(data, "videos", "pinhole_front", "*.mp4")))[0]
            r = run(stage, [py, "-m", "cosmos_jax.generate", f"--checkpoint={jdir}", f"--view_condition_video={clip}",
                            f"--out={os.path.join(work, 'generated')}", "--n_views=3", "--rig=training",
                            "--num_steps=2"], work)
        elif stage == "export":
            r = {"job_files": check_pt(sorted(glob.glob(os.path.join(jdir, "checkpoints", "*_model.pt"))))}
            for p in glob.glob(os.path.join(jdir, "checkpoints", "*_model.pt")):
                os.remove(p)  # disk: the job's export and orbax_to_pt's output do not fit together at 7B
            dst = os.path.join(work, "orbax_to_pt")
            r.update(run(stage, [py, "-m", "converters.orbax_to_pt", f"--src={jdir}", f"--dst={dst}"], work))
            r["orbax_to_pt_files"] = check_pt(sorted(glob.glob(os.path.join(dst, "*_model.pt"))))
            for p in glob.glob(os.path.join(dst, "*_model.pt")):
                os.remove(p)
        elif stage == "loader":
            r = run(stage, [py, "scripts/bench_loader.py", "--shape=seed", "--threads=2,8,16", "--samples=32",
                            f"--work={os.path.join(work, 'loader')}"], work)
        else:
            raise app.UsageError(f"unknown stage {stage!r}")
        res["stages"][f"{stage}_{F.mode}" if stage.startswith(("train", "make", "convert", "export", "gen"))
                      else stage] = r
        json.dump(res, open(state_path, "w"), indent=2, default=str)
        if F.mirror:
            os.makedirs(F.mirror, exist_ok=True)
            for p in [state_path, *glob.glob(os.path.join(work, "*.log"))]:
                shutil.copy(p, F.mirror)
    if F.result:
        import jax

        from scripts.bench_common import write_result

        res.update(name="e2e", card=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(),
                   command=" ".join(["python", *sys.argv]))
        print("wrote", write_result(res, os.path.dirname(F.result) or ".", os.path.basename(F.result)))


def check_pt(paths: list[str]) -> list[dict]:
    """Each file: torch.load(weights_only=True, mmap=True), its tensor count, dtypes and size."""
    import torch

    out = []
    for p in paths:
        t = time.time()
        sd = torch.load(p, weights_only=True, mmap=True)
        out.append({"file": os.path.basename(p), "keys": len(sd), "gb": round(os.path.getsize(p) / 1e9, 2),
                    "dtypes": sorted({str(v.dtype) for v in sd.values()}), "load_s": round(time.time() - t, 1),
                    "first_key": next(iter(sd)), "last_key": list(sd)[-1]})
        del sd
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == "__main__":
    app.run(main)
