"""The README's main command on a busy machine: torch on every core (as before) vs the cores left free (now).

Starts `--jobs` CPU-bound processes (each stops by itself after `--burn-s` seconds), then times whole processes of
`litewhisper compress MODEL -o DIR` (built-in synthetic calibration, the README's main job), alternating

  all-cores   OMP_NUM_THREADS = the machine's cores (what torch did before `litewhisper.cpu`)
  free-cores  no OMP_NUM_THREADS: the CLI samples /proc/stat and runs torch on the cores the jobs leave free

for `--rounds` rounds, and prints each run's wall time and the per-stage times the command logs.

    PYTHONPATH=src python benchmarks/busy_machine.py --jobs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_compress(model: str, out: Path, threads: int | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one whole `litewhisper compress` process and its logged stage times."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "litewhisper", "compress", model, "-o", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    stages = {m[1]: float(m[2]) for m in re.finditer(r"INFO: (\w+): (\d+\.\d) s", done.stderr)}
    chosen = re.search(r"running on (\d+) thread", done.stderr)
    stages["threads"] = float(chosen[1]) if chosen else float(threads or os.cpu_count() or 1)
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--jobs", type=int, default=2, help="CPU-bound jobs running beside (default 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--burn-s", type=float, default=1800, help="the jobs stop by themselves after this")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    convert = f"from litewhisper.models.load import load_model; load_model({args.model!r})"  # cached, untimed
    subprocess.run([sys.executable, "-c", convert], env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    burners = [subprocess.Popen([sys.executable, "-c", BURN.format(seconds=args.burn_s)]) for _ in range(args.jobs)]
    try:
        time.sleep(2)
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(args.rounds):
                for label, threads in (("all-cores", cores), ("free-cores", None)):
                    wall, stages = run_compress(args.model, Path(tmp) / "out", threads)
                    detail = ", ".join(f"{k} {v:g}" for k, v in stages.items())
                    print(f"round {rnd + 1} {label:>10}: {wall:6.1f} s wall ({detail})", flush=True)
    finally:
        for p in burners:
            p.kill()


if __name__ == "__main__":
    main()
