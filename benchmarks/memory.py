"""Peak resident memory of an extraction against the data set's size.

Extracts the first 1,000 and the first 10,000 CIFAR-10 training JPEGs (listed in a
CSV manifest), each in a fresh process and a fresh cache, and reports the peak RSS
of each process (``resource.getrusage``): it should not grow with the data set.

Usage: python benchmarks/memory.py [--sizes 1000 10000] [--input-size 96]
Prints a table and writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "datasets" / "cifar10" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--input-size", type=int, default=96)
    args = parser.parse_args()
    files = sorted(DATA.glob("*/*.jpg"))
    per_class = {}
    for path in files:  # interleave classes so every subset has all ten
        per_class.setdefault(path.parent.name, []).append(path)
    interleaved = [p for group in zip(*per_class.values(), strict=False) for p in group]
    rows = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="fc-bench-mem-"))
        manifest = work / "manifest.csv"
        manifest.write_text("".join(f"{p},{p.parent.name}\n" for p in interleaved[:n]))
        script = (
            "import resource, sys\n"
            "from featurecache.cli import app\n"
            "try:\n    app(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print('PEAK_KB', peak, file=sys.stderr)\n"
        )
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                "-q",
                "extract",
                "--data",
                str(manifest),
                "--weights",
                "none",
                "--input-size",
                str(args.input_size),
                "--cache",
                str(work / "cache"),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - start
        peak_kb = int(
            next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KB"))
        )
        rows.append({"n_images": n, "peak_rss_mb": peak_kb / 1024, "seconds": seconds})
        print(f"{n} images: peak RSS {peak_kb / 1024:.0f} MB, {seconds:.0f} s", flush=True)
    base = rows[0]["peak_rss_mb"]
    print(f"\nMobileNetV2 (random weights) at {args.input_size} px over CIFAR-10 train JPEGs")
    print(f"{'images':>8}{'peak RSS MB':>13}{'vs first':>10}{'seconds':>9}")
    for r in rows:
        print(
            f"{r['n_images']:>8}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / base:>10.2f}"
            f"{r['seconds']:>9.0f}"
        )
    out = {
        "benchmark": "memory",
        "input_size": args.input_size,
        "rows": rows,
    }
    save("memory", out)


if __name__ == "__main__":
    main()
