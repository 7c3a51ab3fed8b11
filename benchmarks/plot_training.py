"""Draw a training run's loss curves (log.jsonl) as a PNG, for docs/embedded-model.md.

    python benchmarks/plot_training.py runs/tiny/log.jsonl docs/images/embedded-loss.png
    python benchmarks/plot_training.py runs/a/log.jsonl runs/b/log.jsonl out.png   # b continued a (--init)

Several logs are drawn one after the other (each next run's steps shifted to start where the
previous one's last logged step was), for a model trained by a chain of `--init` runs.

Plots the loss EMA (min-SNR weighted, what the optimiser sees), the unweighted eps MSE of each
logged step, and the held-out EMA evaluation (`eval_mse_ema`, when the run had --eval-every),
against the step, with the stage-2 switch and curriculum phase changes marked. OpenCV draws it
(no plotting library is a dependency of vcomp).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 420, 70, 20, 40, 50
SERIES = (("loss_ema", (200, 90, 30), "loss EMA (min-SNR weighted)"),
          ("mse", (160, 160, 160), "prediction MSE (eps or v)"),
          ("eval_mse_ema", (30, 30, 220), "held-out eps MSE, EMA weights"))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw(rows: list[dict]) -> np.ndarray:
    img = np.full((H, W, 3), 255, np.uint8)
    steps = [r["step"] for r in rows]
    s_max = max(steps) or 1
    values = [r[k] for r in rows for k, _, _ in SERIES if r.get(k) is not None]
    lo, hi = 0.0, max(values) * 1.05
    x = lambda s: int(PAD_L + (W - PAD_L - PAD_R) * s / s_max)  # noqa: E731
    y = lambda v: int(H - PAD_B - (H - PAD_T - PAD_B) * (v - lo) / (hi - lo))  # noqa: E731
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (PAD_L, PAD_T), (W - PAD_R, H - PAD_B), (0, 0, 0), 1)
    for i in range(6):  # y grid
        v = lo + (hi - lo) * i / 5
        cv2.line(img, (PAD_L, y(v)), (W - PAD_R, y(v)), (230, 230, 230), 1)
        cv2.putText(img, f"{v:.2f}", (8, y(v) + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(6):  # x ticks
        s = s_max * i / 5
        cv2.putText(img, f"{int(s)}", (x(s) - 12, H - PAD_B + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "step", (W // 2 - 15, H - 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    prev, marks = None, 0  # phase changes: stage, frames, size, run
    for r in (r for r in rows if "frames" in r):  # eval rows carry no phase
        phase = (r.get("stage"), r.get("frames"), r.get("size"), r.get("run"))
        if prev is not None and phase != prev:
            cv2.line(img, (x(r["step"]), PAD_T), (x(r["step"]), H - PAD_B), (120, 200, 120), 1)
            new_run = prev[3] != phase[3]
            label = ("new run (--init), " if new_run else "") + f"stage {phase[0]}, {phase[1]}x{phase[2]}px"
            cv2.putText(img, label, (x(r["step"]) + 3, PAD_T + 14 + 14 * (marks % 3)), font, 0.38, (60, 140, 60), 1,
                        cv2.LINE_AA)
            marks += 1
        prev = phase
    for n, (key, colour, label) in enumerate(SERIES):
        pts = np.array([(x(r["step"]), y(r[key])) for r in rows if r.get(key) is not None], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, colour, 2 if key != "mse" else 1, cv2.LINE_AA)
        cv2.line(img, (PAD_L + 10 + 260 * n, 22), (PAD_L + 30 + 260 * n, 22), colour, 2)
        cv2.putText(img, label, (PAD_L + 35 + 260 * n, 26), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", type=Path, nargs="+", help="log.jsonl of each run, in training order")
    ap.add_argument("png", type=Path)
    args = ap.parse_args(argv)
    rows, offset = [], 0
    for log in args.logs:
        run = read_log(log)
        if not run:
            print(f"{log}: no log rows", file=sys.stderr)
            return 2
        rows += [{**r, "step": r["step"] + offset, "run": str(log)} for r in run]
        offset = rows[-1]["step"]
    args.png.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(draw(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    args.png.write_bytes(buf.tobytes())
    print(f"{args.png}: {len(rows)} rows, steps {rows[0]['step']}..{rows[-1]['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
