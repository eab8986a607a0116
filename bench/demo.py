"""Whole `cxrflow demo` wall time (install excluded), against the 5-minute budget on 2 cores.

There is no bare counterpart for a whole pipeline run, so this entry has an absolute target:
`value` is the wall time in seconds, `target` 300 s, and `ok` says whether it fits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import common

BUDGET_S = 300.0


def run() -> dict:
    out = os.path.join(common.WORK_DIR, "demo")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxrflow.cli", "demo", "--output", out, "--force"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cxrflow demo failed:\n{done.stderr[-2000:]}")
    print(f"[demo] cxrflow demo: {wall:.1f} s wall")
    return {"demo_wall_time": {
        "value": round(wall, 1), "baseline": None, "ratio": None, "target": BUDGET_S, "ok": wall <= BUDGET_S,
        "unit": "s", "target_kind": "max_absolute",
    }}
