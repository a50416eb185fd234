"""The learning run's table: step 0 vs the end vs the front-copy baseline vs the real views, for each metric.

    python scripts/learning_table.py DIR --card "NVIDIA H200" --out bench/results/rig_learning_<card>_<date>.json

DIR holds what scripts/gpu_learning.sh copies: metrics.jsonl (the job's validation rows, scored on the held-out clip
at every save) and evaluate_metrics.json (`python -m cosmos_jax.evaluate` on the held-out clips at the last save).
Prints a Markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys

METRICS = (  # (validation key, evaluate key, label, better)
    ("xview_sampson_median_px", "sampson_median_px", "Sampson median (px)", "lower"),
    ("xview_inlier_fraction", "inlier_fraction", "inliers within 2 px", "higher"),
    ("xview_matches", "matches", "SIFT matches in the overlaps", "higher"),
    ("psnr_db", "psnr_db", "PSNR vs real (dB)", "higher"),
    ("ssim", "ssim", "SSIM vs real", "higher"),
)


def read_rows(path: pathlib.Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e})") from None
    return rows


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def table(rows: list[dict], evaluated: dict | None) -> dict:
    val = sorted((r for r in rows if r.get("kind") == "val"), key=lambda r: r["step"])
    ref = [r for r in rows if r.get("kind") == "val_reference"]
    if not val or not ref:
        raise SystemExit("metrics.jsonl: expected rows of kind 'val' and 'val_reference' (validation at each save); "
                         f"found kinds {sorted({r.get('kind') for r in rows})}")
    first, last, ref = val[0], val[-1], ref[0]
    out = {"steps": [r["step"] for r in val], "validation": {}, "curves": {}}
    for key, ekey, label, better in METRICS:
        out["validation"][key] = {
            "label": label, "better": better, "step_0": _num(first.get(key)),
            f"step_{last['step']}": _num(last.get(key)),
            "baseline_front_copy": _num(ref.get(f"baseline_front_copy_{ekey}")), "real": _num(ref.get(f"real_{ekey}")),
            "real_tokenized": _num(ref.get(f"real_tokenized_{ekey}"))}
        out["curves"][key] = [_num(r.get(key)) for r in val]
    out["val_loss_ema"] = [_num(r.get("val_loss_ema")) for r in val]
    if evaluated:
        means = evaluated["means"]
        out["evaluate"] = {"checkpoint": evaluated.get("checkpoint"), "dataset": evaluated.get("dataset"),
                           "clips": len(evaluated.get("clips", [])), "num_steps": evaluated.get("num_steps"),
                           "guidance": evaluated.get("guidance"),
                           **{k: {e: _num(means[k].get(e)) for _, e, _, _ in METRICS} for k in means}}
    return out


def markdown(t: dict) -> str:
    end = f"step_{t['steps'][-1]}"
    lines = [f"| metric | step 0 | step {t['steps'][-1]} | front-copy baseline | real views | real views through the "
             "tokenizer |", "|---|---|---|---|---|---|"]
    for v in t["validation"].values():
        cells = [v["step_0"], v[end], v["baseline_front_copy"], v["real"], v.get("real_tokenized")]
        lines.append(f"| {v['label']} ({v['better']} is better) | " + " | ".join("—" if c is None else f"{c:g}"
                                                                              for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--card", required=True)
    p.add_argument("--command", default="RIG_VIDEOS=datasets/rig_learning_videos bash scripts/gpu_learning.sh OUT")
    p.add_argument("--out", type=pathlib.Path)
    a = p.parse_args(argv)
    metrics = a.dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{metrics}: missing (scripts/gpu_learning.sh copies the job's metrics.jsonl there)")
    ev = a.dir / "evaluate_metrics.json"
    t = {"name": "rig_learning", "card": a.card, "date": datetime.date.today().isoformat(), "command": a.command,
         **table(read_rows(metrics), json.loads(ev.read_text()) if ev.is_file() else None)}
    print(markdown(t))
    if a.out:
        a.out.write_text(json.dumps(t, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
