"""Damaged caches: found when read, found by `verify`, repaired by `verify --repair`.

A real cache (cat vs non-cat through MobileNetV2 with the real ImageNet weights) is
damaged the ways disks and copies damage files: flipped bytes, a truncated chunk, a
deleted chunk, a deleted `current`, garbage metadata. Reading it gives one line (exit
5), never a traceback or wrong numbers; `verify` names the damage (exit 5); `verify
--repair` recomputes exactly the damaged rows and the result equals the clean cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurecache.cache import Cache
from featurecache.errors import EXIT_DAMAGED, EXIT_OK
from tests.conftest import REPO, invoke, make_image

pytestmark = pytest.mark.real_weights

PIPELINE = REPO / "pipelines" / "catvnoncat.toml"


@pytest.fixture(scope="module")
def clean(tmp_path_factory, datasets_dir) -> Path:
    """A cache extracted once, for every test to copy and damage."""
    root = tmp_path_factory.mktemp("verify") / "cache"
    result = invoke("extract", PIPELINE, "--data-root", datasets_dir, "--cache", root)
    assert result.exit_code == 0, result.output
    return root


def generation(root: Path) -> Path:
    [group] = (p for p in (root / "catvnoncat").iterdir() if p.is_dir())
    return group / "current"


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


#: damage name -> (what it does to the committed generation `g`, words verify prints)
DAMAGE = {
    "flipped bytes": (lambda g: flip_bytes(g / "features/c/1/0"), "checksum mismatch"),
    "truncated chunk": (lambda g: (g / "labels/c/0").write_bytes(b"\0" * 7), "labels"),
    "deleted chunk": (lambda g: (g / "features/c/0/0").unlink(), "missing"),
    "garbage array metadata": (
        lambda g: (g / "features/zarr.json").write_text("{not json"),
        "metadata unreadable",
    ),
    "garbage generation metadata": (
        lambda g: (g / "zarr.json").write_text("\x00garbage"),
        "zarr.json unreadable",
    ),
    "deleted current": (lambda g: g.unlink(), "current pointer: missing"),
}


def damaged_copy(clean: Path, tmp_path: Path, damage: str) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(clean, root, symlinks=True)
    DAMAGE[damage][0](generation(root))
    return root


def read_all(root: Path):
    cache = Cache(root)
    [group] = cache.group_names("catvnoncat")
    return cache.read("catvnoncat", group)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_finds_and_repair_fixes_real_damage(clean, tmp_path, datasets_dir, damage):
    root = damaged_copy(clean, tmp_path, damage)

    found = invoke("verify", "--cache", root)
    assert found.exit_code == EXIT_DAMAGED, found.output
    assert "DAMAGED" in found.output and DAMAGE[damage][1] in found.output, found.output

    fixed = invoke("verify", PIPELINE, "--data-root", datasets_dir, "--cache", root, "--repair")
    assert fixed.exit_code == EXIT_OK, fixed.output
    assert "clean after repair" in fixed.output
    assert invoke("verify", "--cache", root).exit_code == EXIT_OK

    a, b = read_all(root), read_all(clean)
    assert list(a.keys) == list(b.keys) and list(a.sources) == list(b.sources)
    np.testing.assert_array_equal(a.y, b.y)
    # recomputed rows ran in batches of another composition: the refresh tolerance
    scale = float(np.abs(b.X).max())
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5 * scale)


def test_repair_recomputes_exactly_the_damaged_rows(clean, tmp_path, datasets_dir):
    root = damaged_copy(clean, tmp_path, "flipped bytes")  # features rows 256-258
    fixed = invoke(
        "--quiet", "verify", PIPELINE, "--data-root", datasets_dir, "--cache", root,
        "--repair", "--json",
    )  # fmt: skip
    doc = json.loads(fixed.output)
    [extracted] = doc["repair"][0]["extracted"]
    assert extracted["n_extracted"] == 3 and extracted["n_reused"] == 256
    assert doc["clean"]


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated chunk", "deleted chunk"])
def test_reading_damaged_rows_is_one_line_never_wrong_numbers(clean, tmp_path, damage):
    root = damaged_copy(clean, tmp_path, damage)
    result = invoke("train-head", PIPELINE, "--cache", root, "--output", tmp_path / "runs")
    assert result.exit_code == EXIT_DAMAGED, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: the cache is damaged") and "verify --repair" in line
    assert "rows " in line and "Traceback" not in result.output


def test_an_old_cache_without_checksums_reads_and_repair_rewrites_it(clean, tmp_path, datasets_dir):
    """A generation written before the crc32c codec: its arrays' metadata lists Blosc only."""
    from featurecache.cache.storage import Location
    from featurecache.cache.store import COMPRESSOR, open_group

    root = tmp_path / "old"
    shutil.copytree(clean, root, symlinks=True)
    gen = generation(root).resolve()
    source = open_group(Location.parse(gen), str(gen), mode="r")
    old = open_group(Location.parse(root), str(root / "old-gen"), mode="w")
    for name in source.array_keys():
        array = source[name]
        copy = old.create_array(
            name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
            compressors=COMPRESSOR[0], dimension_names=array.metadata.dimension_names,
        )  # fmt: skip
        copy[...] = array[...]
    for name in source.array_keys():
        shutil.rmtree(gen / name)
        shutil.move(root / "old-gen" / name, gen / name)
    shutil.rmtree(root / "old-gen")

    np.testing.assert_array_equal(read_all(root).X, read_all(clean).X)
    found = invoke("verify", "--cache", root)
    assert found.exit_code == EXIT_OK and "no checksums" in found.output, found.output
    fixed = invoke("verify", PIPELINE, "--data-root", datasets_dir, "--cache", root, "--repair")
    assert fixed.exit_code == EXIT_OK and "rewritten with checksums" in fixed.output
    meta = json.loads((generation(root) / "features" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    np.testing.assert_array_equal(read_all(root).X, read_all(clean).X)


def test_rows_whose_image_is_gone_are_named_not_dropped_in_silence(tmp_path):
    folder = tmp_path / "photos"
    for label, color in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        for i in range(12):
            make_image(folder / label / f"{i:02d}.png", color, size=(24, 24), pattern=i % 4)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'name = "p"\ncache = "{tmp_path / "cache"}"\n'
        f'[[datasets]]\nname = "photos"\npath = "{folder}"\n'
        '[[backbones]]\nname = "mobilenet_v2"\nweights = "none"\ninput_size = 32\n'
    )
    assert invoke("extract", pipeline).exit_code == 0
    root = tmp_path / "cache"
    [group] = (p for p in (root / "photos").iterdir() if p.is_dir())
    gen = group / "current"
    flip_bytes(gen / "features/c/0/0")  # the only chunk: every row
    (folder / "a" / "03.png").unlink()

    fixed = invoke("verify", pipeline, "--repair")
    assert fixed.exit_code == EXIT_DAMAGED, fixed.output
    assert "UNRECOVERABLE" in fixed.output and "03.png is gone" in fixed.output
    fs = Cache(root).read("photos", group.name)
    assert len(fs.keys) == 23 and not any(s.endswith("a/03.png") for s in fs.sources)
    assert invoke("verify", "--cache", root).exit_code == EXIT_OK


def test_a_refresh_never_copies_a_missing_chunk_as_zeros(tmp_path):
    """Reused rows are read chunk by chunk: a deleted chunk stops the refresh (exit 5)
    instead of being copied into the new generation as zeros and checksummed there."""
    folder = tmp_path / "photos"
    for i in range(6):
        make_image(folder / f"c{i % 2}" / f"{i}.png", (30 * i, 90, 160), size=(24, 24))
    args = ["--data", folder, "--weights", "none", "--input-size", 32, "--cache", tmp_path / "c"]
    assert invoke("extract", *args).exit_code == 0
    [group] = (p for p in (tmp_path / "c" / "photos").iterdir() if p.is_dir())
    (group / "current" / "features" / "c" / "0" / "0").unlink()
    make_image(folder / "c0" / "new.png", (1, 2, 3), size=(24, 24))

    result = invoke("extract", *args)
    assert result.exit_code == EXIT_DAMAGED, result.output
    assert "array 'features', rows 0-5 (missing)" in result.output
    assert [p.name for p in group.glob("gen-*")] == ["gen-000001"]  # nothing committed


def test_repair_with_the_cache_alone_recomputes_from_its_provenance(clean, tmp_path):
    """No pipeline file: the damaged group's attributes say which data set, backbone,
    weights and batch size made it, and only the damaged rows are computed again."""
    root = damaged_copy(clean, tmp_path, "flipped bytes")  # features rows 256-258
    fixed = invoke("--quiet", "verify", root, "--repair", "--json")
    assert fixed.exit_code == EXIT_OK, fixed.output
    doc = json.loads(fixed.output)
    [extracted] = doc["repair"][0]["extracted"]
    assert extracted["n_extracted"] == 3 and extracted["n_reused"] == 256
    assert doc["clean"] and invoke("verify", root).exit_code == EXIT_OK

    a, b = read_all(root), read_all(clean)
    assert list(a.keys) == list(b.keys) and list(a.sources) == list(b.sources)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.X[:256], b.X[:256])  # copied
    scale = float(np.abs(b.X).max())  # computed again, in a batch of 3
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5 * scale)


def save_random_weights(path: Path, seed: int) -> Path:
    from featurecache.deps import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    keras.applications.MobileNetV2(
        include_top=False, weights=None, pooling="avg", input_shape=(32, 32, 3)
    ).save_weights(path)
    return path


def test_repair_with_the_cache_alone_names_what_is_gone_or_changed(tmp_path):
    folder = tmp_path / "photos"
    for i in range(8):
        make_image(folder / f"c{i % 2}" / f"{i}.png", (30 * i, 90, 160), size=(24, 24))
    weights = save_random_weights(tmp_path / "mine.weights.h5", seed=3)
    root = tmp_path / "cache"
    args = ["--data", folder, "--weights", weights, "--input-size", 32, "--cache", root]
    assert invoke("extract", *args).exit_code == 0
    [group] = (p for p in (root / "photos").iterdir() if p.is_dir())
    flip_bytes(group / "current" / "features/c/0/0")

    def not_repaired() -> str:
        result = invoke("verify", root, "--repair")
        assert result.exit_code == EXIT_DAMAGED, result.output
        [line] = [x for x in result.output.splitlines() if "NOT REPAIRED" in x]
        assert f"photos/{group.name} cannot be recomputed: " in line
        return line

    folder.rename(tmp_path / "moved")
    line = not_repaired()
    assert f"its images ({folder.resolve()}, " in line and "put them back there" in line
    (tmp_path / "moved").rename(folder)
    save_random_weights(weights, seed=4)  # the same file, other weights
    line = not_repaired()
    assert f"its weights {weights.resolve()} changed since it was made" in line
    weights.unlink()
    assert f"its weights file {weights.resolve()} is gone; put it back" in not_repaired()
    (group / "current" / "zarr.json").write_text("\x00garbage")  # the only provenance
    assert "no generation's attributes are readable" in not_repaired()


def test_a_group_with_no_pointer_and_no_clean_generation_is_rebuilt_once(tmp_path):
    """``current`` lost and the only generation damaged: nothing clean to point at, so the
    group is extracted again from its provenance, once, and reported repaired."""
    folder = tmp_path / "photos"
    for i in range(8):
        make_image(folder / f"c{i % 2}" / f"{i}.png", (30 * i, 90, 160), size=(24, 24))
    root = tmp_path / "cache"
    args = ["--data", folder, "--weights", "none", "--input-size", 32, "--cache", root]
    assert invoke("extract", *args).exit_code == 0
    [group] = (p for p in (root / "photos").iterdir() if p.is_dir())
    flip_bytes(group / "current" / "features/c/0/0")
    (group / "current").unlink()

    fixed = invoke("--quiet", "verify", root, "--repair", "--json")
    assert fixed.exit_code == EXIT_OK, fixed.output
    [repair] = json.loads(fixed.output)["repair"]
    assert repair["unrepaired"] == []
    assert [e["n_extracted"] for e in repair["extracted"]] == [8]
    assert invoke("verify", root).exit_code == EXIT_OK
