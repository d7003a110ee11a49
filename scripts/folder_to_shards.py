"""Turn a class folder into WebDataset tar shards, one set per split, with webdataset's ShardWriter.

    python scripts/folder_to_shards.py ../shared/datasets/clothing_small shards/clothing_small

reads ``FOLDER/<split>/<class>/*`` (or ``FOLDER/<class>/*``, written as split ``all``) and
writes ``OUT/<split>-000000.tar``, ``OUT/<split>-000001.tar``... of at most ``--per-shard``
images each. Each sample holds the image file's bytes unchanged (``jpg``, ``png``...: the
extension is the file's), its class index in sorted class names (``cls``) and its class
name (``json``: ``{"label": ..., "file": ...}``). The bytes are the file's, so each image
keeps its content key: featurecache finds the same cached rows for the folder and its
shards. Needs ``pip install webdataset``; img2dataset writes the same layout from URLs.
Prints the brace pattern of each split's shards, for a pipeline's ``files``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPLITS = ("train", "validation", "val", "test")


def samples(folder: Path) -> dict[str, list[tuple[Path, str]]]:
    """Image files by split (``all`` when the folder has no split folders), sorted."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    layout = {p.name: p for p in subdirs if p.name in SPLITS} or {"all": folder}
    found = {}
    for split, root in layout.items():
        found[split] = [
            (path, class_dir.name)
            for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for path in sorted(class_dir.iterdir())
            if path.is_file() and not path.name.startswith(".")
        ]
    return found


def write_shards(folder: Path, out: Path, per_shard: int = 128) -> dict[str, str]:
    """Write the shards; returns each split's brace pattern."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    by_split = samples(folder)
    classes = sorted({name for files in by_split.values() for _, name in files})
    patterns = {}
    for split, files in by_split.items():
        with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for path, name in files:
                key = f"{name}_{path.stem}".replace(".", "_")
                sink.write(
                    {
                        "__key__": key,
                        path.suffix.lstrip(".").lower(): path.read_bytes(),
                        "cls": classes.index(name),
                        "json": json.dumps({"label": name, "file": path.name}),
                    }
                )
        last = (len(files) - 1) // per_shard
        patterns[split] = str(out / f"{split}-{{000000..{last:06d}}}.tar")
    return patterns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-shard", type=int, default=128)
    args = parser.parse_args(argv)
    for split, pattern in write_shards(args.folder, args.out, args.per_shard).items():
        print(f'{split} = ["{pattern}"]')
    return 0


if __name__ == "__main__":
    sys.exit(main())
