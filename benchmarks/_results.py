"""Saving a benchmark's results: benchmarks/results/<name>.json, with the machine."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, payload: dict) -> Path:
    """Write ``payload`` (plus machine and date, unless given) and say where."""
    payload.setdefault("machine", {"platform": platform.platform(), "cpus": os.cpu_count()})
    payload.setdefault("date", time.strftime("%Y-%m-%d"))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"saved benchmarks/results/{name}.json")
    return path
