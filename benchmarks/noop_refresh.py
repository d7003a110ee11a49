"""No-op refresh time over 10,000 real files (CIFAR-10's test set as JPEG).

A cron job runs `featurecache refresh` even when nothing changed, so the no-op path
must stay cheap: list and stat every file, compare the fingerprint, keep the heads.
This script extracts the set once (MobileNetV2 with random weights at 32 px: the
backbone's speed does not matter here), then times the no-op refresh as a library
call and as the full command (a new Python process, as cron starts it).

Usage: python benchmarks/noop_refresh.py [--data ../shared/datasets/cifar10/test]
Prints a table and writes benchmarks/results/noop_refresh.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save  # benchmarks/_results.py: scripts run from this folder

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "cifar10" / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from featurecache.config import load_pipeline
    from featurecache.datasets import list_dataset
    from featurecache.workflow import refresh

    work = Path(tempfile.mkdtemp(prefix="fc-bench-noop-"))
    pipeline_file = work / "bench.toml"
    pipeline_file.write_text(
        f'name = "bench"\ncache = "{work / "cache"}"\noutput = "{work / "runs"}"\n'
        f'batch_size = 64\n[[datasets]]\nname = "cifar10_test"\npath = "{args.data.resolve()}"\n'
        '[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\ninput_size = 32\n'
        '[[heads]]\nkind = "logistic_regression"\n'
    )
    pipeline = load_pipeline(pipeline_file)
    start = time.perf_counter()
    [first] = refresh([pipeline])
    initial = time.perf_counter() - start
    n_files = first.extract[0].n_images

    listing_times, library_times, cli_times = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        list_dataset(pipeline.datasets[0])
        listing_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        [again] = refresh([pipeline])
        library_times.append(time.perf_counter() - t)
        assert again.extract[0].cache_hit and not any(h.trained for h in again.heads)
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "featurecache", "-q", "refresh", str(pipeline_file), "--json"],
            check=True,
            capture_output=True,
        )
        cli_times.append(time.perf_counter() - t)

    rows = [
        ("initial extract + head (seconds)", initial),
        ("list + stat every file (median s)", statistics.median(listing_times)),
        ("no-op refresh, library call (median s)", statistics.median(library_times)),
        ("no-op refresh, `featurecache refresh` process (median s)", statistics.median(cli_times)),
    ]
    print(f"no-op refresh over {n_files:,} files ({args.data}), {args.repeats} repeats")
    print(f"{'measure':<60}{'value':>10}")
    for name, value in rows:
        print(f"{name:<60}{value:>10.3f}")
    result = {
        "benchmark": "noop_refresh",
        "n_files": n_files,
        "data": str(args.data),
        "repeats": args.repeats,
        "initial_seconds": initial,
        "listing_seconds": listing_times,
        "noop_library_seconds": library_times,
        "noop_cli_seconds": cli_times,
    }
    save("noop_refresh", result)


if __name__ == "__main__":
    main()
