"""How cache/ and expected.json here were made, with featurecache at commit 7d434e0:

    cd tests/data/cache_7d434e0 && ../../../.venv/bin/python make.py

Kept for the record; running it with a later featurecache makes a cache of that version.
"""

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["FEATURECACHE_ENGINE"] = "keras"
HERE = Path(__file__).resolve().parent
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

for i, (name, color) in enumerate(COLORS.items()):
    for j in range(4):
        path = HERE / "images" / name / f"{name}_{j}.png"
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        pixels = np.empty((30, 40, 3), np.uint8)
        pixels[:] = color
        pixels[:, i::4] = 255 - np.asarray(color, np.uint8)
        noisy = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.astype(np.uint8)).save(path)

import featurecache  # noqa: E402

pipeline = featurecache.load_pipeline(HERE / "pipeline.toml")
(result,) = featurecache.extract(pipeline)
fs = featurecache.open_cache(HERE / "cache").features("swatches")
full = featurecache.open_cache(HERE / "cache").read(
    "swatches", fs.group, taps=("block_13_expand_relu",), flipped=True
)
arrays = {"X": fs.X, "y": fs.y, "X_taps": full.X, "X_flip": full.flipped}
expected = {
    "group": fs.group,
    "versions": fs.provenance["versions"],
    "request_hash": fs.provenance["request_hash"],
    "recipe_hash": fs.provenance["recipe_hash"],
    "sha256": {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()
    },
    "shapes": {k: list(v.shape) for k, v in arrays.items()},
    "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
    "split": fs.split.astype(str).tolist(),
    "keys": fs.keys.astype(str).tolist(),
    "sources": [Path(s).relative_to(HERE).as_posix() for s in fs.sources],
}
(HERE / "expected.json").write_text(json.dumps(expected, indent=1))
print(result.group, result.n_extracted)
