"""The seed's real path end to end, as a user runs it, each phase timed with its peak host memory.

    python scripts/gpu_e2e.py --work DIR [--size 7b|tiny] [--stages a,b+c,...] [--mode lora|full] [--blocks N]
    scripts/gpu_e2e.sh ARGS   (on the device: installs the carried wheels first)

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
Stages joined by `+` run at the same time (e.g. `data+make_pt`: the CPU renders clips while the GPU initialises
the network; `train2+generate`: each GPU process then gets 45 % of the card). Each train stage's phases (state,
compile with the step's memory analysis, first step, saves, exports, validation, samples, step times, MFU, peak
device memory) are read from its log. Results accumulate in DIR/e2e.json (stages can be run by several calls);
--result writes the final JSON.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("work", "/tmp/cosmos_jax_e2e", "working folder (data, weights, jobs)")
flags.DEFINE_enum("size", "7b", ["7b", "tiny"], "7b: configs/waymo.py at the seed shape; tiny: a CPU dry run")
flags.DEFINE_enum("mode", "lora", ["lora", "full"], "LoRA or full fine-tune")
flags.DEFINE_integer("blocks", 0, "network blocks (0: the config's)")
flags.DEFINE_string("stages", "data+make_pt,validate+convert,train1,train2+generate,export",
                    "stages to run, in order; a+b runs a and b at the same time")
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


PHASE_LINES = {  # train log line -> (phase key, groups): what train.py and train_phases.py log at INFO
    "state_s": r"(?:state built|resumed \S+ at step \d+) in ([\d.]+) s",
    "compile_s": r"train step compiled in ([\d.]+) s",
    "step_arguments_gib": r"arguments ([\d.]+) GiB",
    "step_temporaries_gib": r"temporaries ([\d.]+) GiB",
    "first_step_s": r"first step \(\d+\) ran in ([\d.]+) s",
    "peak_device_memory_gib": r"peak device memory ([\d.]+) GiB",
    "checkpoint_gb": r"checkpoint of ([\d.]+) GB started",
    "export_gb": r"exported reg \(bf16\) \+ EMA \(fp32\) \.pt, ([\d.]+) GB",
    "export_s": r"exported reg .* GB in ([\d.]+) s",
    "export_host_rss_growth_gib": r"host memory \+([\d.]+) GiB",
    "validation_s": r"val_loss \S+ \(EMA \S+\) in ([\d.]+) s",
    "samples_s": r"samples \(\d+ sampler steps\) in ([\d.]+) s",
}
STEP_LINE = (r"step (\d+)/\d+ loss (\S+) grad_norm (\S+) lr \S+ \| ([\d.]+) s/step, [\d.]+ samples/s"
             r"(?:, MFU ([\d.]+)%)? \|")


def train_phases(log_path: str) -> dict:
    """Each phase's values, in log order, from a train stage's log (also when the process was killed)."""
    text = open(log_path, errors="replace").read()
    out = {k: [float(v) for v in re.findall(rx, text)] for k, rx in PHASE_LINES.items()}
    out = {k: v for k, v in out.items() if v}
    out["steps"] = [{"step": int(a), "loss": float(b), "grad_norm": float(c), "step_time_s": float(d),
                     **({"mfu": round(float(e) / 100, 3)} if e else {})}
                    for a, b, c, d, e in re.findall(STEP_LINE, text)]
    if m := re.search(r"is at step (\d+) \(max_iter", text):
        out["already_done_at"] = int(m.group(1))
    if m := re.search(r"step (\d+): its \.pt export was interrupted", text):
        out["rewrote_interrupted_export_of"] = int(m.group(1))
    return out


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
                 "--config.samples.num_steps=2", "--config.samples.val_at_start=False", "--config.log_every=1",
                 "--config.data.num_workers=8", *(LORA if F.mode == "lora" else [])]
    jobs_env = {"OUTPUT_ROOT": os.path.join(work, "jobs")}
    cpu = {"JAX_PLATFORMS": "cpu"}

    def exporting_last() -> bool:  # step 2's checkpoint is complete and its .pt export is being written
        from cosmos_jax.weights import checkpoint

        return (2 in checkpoint.complete_steps(jdir)
                and bool(glob.glob(os.path.join(jdir, "checkpoints", "iter_000000002_*.pt.tmp-*"))))

    def stage_run(stage: str, gpu_env: dict) -> dict:
        if stage == "data":
            frames = "60" if F.size == "7b" else "14"
            return run(stage, [py, "-m", "cosmos_jax.data.synthetic", "--out", data, "--clips", "2", "--frames",
                               frames, "--embed_dim", "1024" if F.size == "7b" else "8"], work, cpu)
        if stage == "validate":
            return run(stage, [py, "-m", "cosmos_jax.data.validate", *cfg], work, cpu)
        if stage == "make_pt":
            return run(stage, [py, "scripts/make_random_pt.py", *cfg, f"--dst={pt}"], work, gpu_env)
        if stage == "convert":
            r = run(stage, [py, "-m", "converters.dit_to_orbax", *cfg, f"--src={pt}", f"--dst={base}",
                            "--overwrite"], work, gpu_env)
            if r["rc"] == 0:
                os.remove(pt)  # the 64 GB disk
            return r
        if stage == "train1":  # killed while the second (last) export is being written
            r = run(stage, train_cmd, work, {**jobs_env, **gpu_env}, kill_when=exporting_last)
            # tiny: the export takes milliseconds and is seldom caught; the run then just finishes
            ok = r["killed"] if F.size == "7b" else r["killed"] or r["rc"] == 0
            return {**r, "ok": ok, "phases": train_phases(r["log"])}
        if stage == "train2":  # resumes at step 2, rewrites its interrupted export, finishes
            r = run(stage, train_cmd, work, {**jobs_env, **gpu_env})
            r["phases"] = train_phases(r["log"])
            summary = os.path.join(jdir, "summary.json")
            if os.path.isfile(summary):
                r["summary"] = json.load(open(summary))
            r["exports"] = sorted(os.listdir(os.path.join(jdir, "checkpoints")))
            return r
        if stage == "generate":
            clip = sorted(glob.glob(os.path.join(data, "videos", "pinhole_front", "*.mp4")))[0]
            r = run(stage, [py, "-m", "cosmos_jax.generate", f"--checkpoint={jdir}", f"--view_condition_video={clip}",
                            f"--out={os.path.join(work, 'generated')}", "--n_views=3", "--rig=training",
                            "--num_steps=2"], work, gpu_env)
            r.update(peak(r["log"]), outputs=sorted(os.listdir(os.path.join(work, "generated")))
                     if os.path.isdir(os.path.join(work, "generated")) else [])
            return r
        if stage == "export":
            out = {"job_files": check_pt(sorted(glob.glob(os.path.join(jdir, "checkpoints", "*_model.pt"))))}
            for p in glob.glob(os.path.join(jdir, "checkpoints", "*_model.pt")):
                os.remove(p)  # disk: the job's export and orbax_to_pt's output do not fit together at 7B
            dst = os.path.join(work, "orbax_to_pt")
            shutil.rmtree(dst, ignore_errors=True)  # an earlier, interrupted call's files: they would not fit beside
            out.update(run(stage, [py, "-m", "converters.orbax_to_pt", f"--src={jdir}", f"--dst={dst}"], work,
                           gpu_env))
            out.update(peak(out["log"]), orbax_to_pt_files=check_pt(sorted(glob.glob(os.path.join(dst, "*_model.pt")))))
            for p in glob.glob(os.path.join(dst, "*_model.pt")):
                os.remove(p)
            return out
        if stage == "loader":
            return run(stage, [py, "scripts/bench_loader.py", "--shape=seed", "--threads=2,8,16", "--samples=32",
                               f"--work={os.path.join(work, 'loader')}", f"--out_dir={work}"], work, cpu)
        raise app.UsageError(f"unknown stage {stage!r}")

    for group in F.stages.split(","):
        names = group.split("+")
        # Two GPU processes at once: each gets part of the card instead of JAX's 95 % (train.py, generate.py).
        gpu_env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"} if len(names) > 1 else {}
        results: dict[str, dict] = {}

        def one(name: str, env=gpu_env, results=results) -> None:
            try:
                results[name] = stage_run(name, env)
            except Exception as e:  # recorded, and the driver fails below
                results[name] = {"error": f"{type(e).__name__}: {e}"}

        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        t = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for name in names:
            key = f"{name}_{F.mode}" if name.startswith(("train", "make", "convert", "export", "gen")) else name
            res["stages"][key] = {**results[name], **({"with": group, "group_seconds": round(time.time() - t, 1)}
                                                      if len(names) > 1 else {})}
        json.dump(res, open(state_path, "w"), indent=2, default=str)
        if F.mirror:
            os.makedirs(F.mirror, exist_ok=True)
            for p in [state_path, *glob.glob(os.path.join(work, "*.log")), *glob.glob(os.path.join(work, "*.json"))]:
                shutil.copy(p, F.mirror)
        failed = [n for n in names if "error" in results[n] or (results[n].get("rc") not in (0, None)
                                                                 and not results[n].get("ok"))]
        if failed:
            print(f"stopping: stage(s) {failed} failed", flush=True)
            break
    if F.result:
        import jax

        from scripts.bench_common import write_result

        res.update(name="e2e", card=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(),
                   command=" ".join(["python", *sys.argv]))
        print("wrote", write_result(res, os.path.dirname(F.result) or ".", os.path.basename(F.result)))
    if any("error" in r or (r.get("rc") not in (0, None) and not r.get("ok")) for r in res["stages"].values()):
        sys.exit(1)


def peak(log_path: str) -> dict:
    m = re.findall(r'(?:peak device memory |"peak_device_memory_gb": )([\d.]+)', open(log_path).read())
    return {"peak_device_memory_gib": float(m[-1])} if m else {}


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
