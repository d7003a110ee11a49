"""One small real data set written in every layout featurecache reads, by the tools that
write them in the wild: a class folder (links to the real JPEGs), WebDataset shards
(``webdataset.ShardWriter``), img2dataset-layout Parquet (``pyarrow``; a binary ``jpg``
column), Hugging Face Parquet and a ``save_to_disk`` folder (``datasets`` itself, with
``cast_column("image", Image())``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

#: Input size of the random-weights MobileNetV2 the format tests extract with.
SIZE = 64

CLASSES = (
    "dress",
    "hat",
    "longsleeve",
    "outwear",
    "pants",
    "shirt",
    "shoes",
    "shorts",
    "skirt",
    "t-shirt",
)


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str
    split: str

    @property
    def key(self) -> str:
        """The WebDataset sample key (no dots: webdataset splits extensions at the first)."""
        return f"{self.label}_{self.path.stem}".replace(".", "_")


def pick_photos(datasets_dir: Path, per_split: dict[str, int]) -> list[Photo]:
    """The first ``per_split[split]`` clothing_small photos of every class, in folder order
    (split, class, name), which every layout below keeps."""
    root = datasets_dir / "clothing_small"
    photos = []
    for split, n in per_split.items():
        for label in CLASSES:
            for path in sorted((root / split / label).iterdir())[:n]:
                photos.append(Photo(path, label, split))
    return photos


def write_folder(photos: list[Photo], root: Path) -> Path:
    for photo in photos:
        target = root / photo.split / photo.label / photo.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(photo.path)
    return root


def write_shards(photos: list[Photo], root: Path, per_shard: int = 16) -> dict[str, list[Path]]:
    """``<split>-NNNNNN.tar`` shards by ``webdataset.ShardWriter``: ``jpg``, ``cls`` (class
    index) and ``json`` (``{"label": name}``) per sample."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[Path]] = {}
    for split in dict.fromkeys(p.split for p in photos):
        pattern = str(root / f"{split}-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for photo in (p for p in photos if p.split == split):
                sink.write(
                    {
                        "__key__": photo.key,
                        "jpg": photo.path.read_bytes(),
                        "cls": CLASSES.index(photo.label),
                        "json": {"label": photo.label},
                    }
                )
        shards[split] = sorted(root.glob(f"{split}-*.tar"))
    return shards


def write_img2dataset_parquet(photos: list[Photo], root: Path) -> dict[str, Path]:
    """One Parquet file per split as img2dataset lays them out: ``key``, ``jpg`` (bytes),
    plus a string ``label`` column; small row groups, so rows span several."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in dict.fromkeys(p.split for p in photos):
        rows = [p for p in photos if p.split == split]
        table = pa.table(
            {
                "key": [p.key for p in rows],
                "jpg": [p.path.read_bytes() for p in rows],
                "label": [p.label for p in rows],
            }
        )
        out[split] = root / f"{split}.parquet"
        pq.write_table(table, out[split], row_group_size=7)
    return out


def hf_dataset_dict(photos: list[Photo]):
    """A ``datasets.DatasetDict`` of the photos: an ``Image`` column holding the bytes and
    a ``ClassLabel`` column."""
    import datasets

    splits = {}
    for split in dict.fromkeys(p.split for p in photos):
        rows = [p for p in photos if p.split == split]
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": p.path.read_bytes(), "path": p.path.name} for p in rows],
                "label": [CLASSES.index(p.label) for p in rows],
            }
        )
        ds = ds.cast_column("image", datasets.Image())
        splits[split] = ds.cast_column("label", datasets.ClassLabel(names=list(CLASSES)))
    return datasets.DatasetDict(splits)


def write_hf(photos: list[Photo], root: Path) -> tuple[dict[str, Path], Path]:
    """The photos as Hugging Face Parquet (``Dataset.to_parquet``) and ``save_to_disk``."""
    dd = hf_dataset_dict(photos)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, ds in dd.items():
        files[split] = root / f"hf-{split}.parquet"
        ds.to_parquet(str(files[split]))
    saved = root / "saved"
    dd.save_to_disk(str(saved))
    return files, saved


def corrupt_jpeg() -> bytes:
    """Bytes that start as a JPEG and then stop making sense."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="JPEG")
    data = buf.getvalue()
    return data[:200] + b"\x00" * 50


def pipeline_for(dataset, cache):
    """One data set, MobileNetV2 with random weights at :data:`SIZE` px, batches of 8."""
    from featurecache.config import BackboneConfig, Pipeline

    return Pipeline(
        name="formats",
        datasets=(dataset,),
        backbones=(BackboneConfig(name="mobilenet_v2", weights="none", input_size=SIZE),),
        cache=cache,
        batch_size=8,
    )
