"""How to compute a damaged group again when no pipeline file says: from its provenance.

A generation's attributes record its data set's configuration (``dataset``), its
backbone's (``backbone``), the weights' SHA-256 and the batch size. :func:`rebuild` turns
them back into configurations, after checking that they would make the same group here:
the images and the weights file are still there, the weights unchanged, and the recipe
(Keras and backend versions) this machine's. Otherwise it says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurecache.cache import Cache, recipe
from featurecache.cache.generations import is_partial
from featurecache.cache.store import read_attrs
from featurecache.cache.verify import GroupCheck
from featurecache.config import BackboneConfig, DatasetConfig, is_url
from featurecache.errors import ConfigError


@dataclass(frozen=True)
class Recompute:
    """How to extract one data set again: its configuration, the backbones whose groups
    need it and the batch size (a pipeline's, or those a generation recorded)."""

    dataset: DatasetConfig
    backbones: tuple[BackboneConfig, ...]
    batch_size: int


def rebuild(cache: Cache, check: GroupCheck) -> Recompute:
    """How the group ``check`` names was made, from a generation's attributes: its data
    set and backbone configuration (:meth:`DatasetConfig.from_description`,
    :meth:`BackboneConfig.from_description`) and batch size.

    Raises
    ------
    ConfigError
        Naming what is missing and the fix, if no generation's attributes are readable,
        the data set's images or the weights file are gone, the weights changed since
        (another SHA-256), or the recipe is not this machine's (other Keras or backend
        versions: another request hash).
    """
    attrs = _recorded(cache, check)
    if attrs is None:
        raise ConfigError(
            "no generation's attributes are readable, so nothing records how it was made; "
            "run `featurecache verify --repair PIPELINE` with the pipeline file that extracts it"
        )
    weights = str(attrs["backbone"].get("weights", ""))
    if weights.lower() not in ("imagenet", "preset", "none") and not Path(weights).is_file():
        raise ConfigError(f"its weights file {weights} is gone; put it back to repair the group")
    try:
        backbone = BackboneConfig.from_description(attrs["backbone"])
        dataset = DatasetConfig.from_description(attrs["dataset"])
    except (TypeError, AttributeError) as exc:  # JSON, but not what describe() wrote
        raise ConfigError(
            f"its provenance is not a data set and backbone configuration ({exc}); run "
            "`featurecache verify --repair PIPELINE` with the pipeline file that extracts it"
        ) from exc
    # local paths only: objects at URLs and shards are checked by listing them
    sources = [dataset.path] if dataset.path else [s.path for s in dataset.hdf5.values()]
    missing = [str(p) for p in sources if not is_url(p) and not Path(p).exists()]
    if missing:
        raise ConfigError(
            f"its images ({', '.join(missing)}, the data set {dataset.name!r} its provenance "
            "records) are gone; put them back there to repair the group"
        )
    _check_recipe(attrs, backbone, check.request_hash)
    return Recompute(dataset, (backbone,), int(attrs.get("batch_size", 32)))


def _check_recipe(attrs: dict[str, Any], backbone: BackboneConfig, request_hash: str) -> None:
    """That ``backbone`` rebuilt from ``attrs`` would make the group again here: the same
    weights (SHA-256 of the file recorded) and the same request hash (library versions).
    A weights file Keras downloads (``imagenet``) that is gone is downloaded again."""
    recorded = attrs.get("weights") or {}
    file, sha = recorded.get("file"), recorded.get("sha256")
    now = recipe.weights_sha256(file, backbone) if file and sha else None
    if now is not None and sha is not None and now != sha:
        raise ConfigError(
            f"its weights {file} changed since it was made (SHA-256 {sha[:12]}..., now "
            f"{now[:12]}...); put back the weights it was made with to repair the group"
        )
    if request_hash in recipe.wanted_hashes(backbone):
        return
    was, here = attrs.get("recipe", {}).get("versions", {}), recipe.request(backbone)["versions"]
    differ = [
        f"{name} {was.get(name)} (here {here.get(name)})"
        for name in sorted(set(was) | set(here))
        if was.get(name) != here.get(name)
    ]
    raise ConfigError(
        f"its recipe cannot run here (made with {', '.join(differ) or 'another request'}); "
        "repair it where those versions run, or `featurecache gc PIPELINE` removes it"
    )


def _recorded(cache: Cache, check: GroupCheck) -> dict[str, Any] | None:
    """The newest committed generation's attributes that record the data set and the
    backbone (the damaged generation's own, unless they are unreadable)."""
    for path in reversed(cache.generations(check.dataset, check.group)):
        name = path.rsplit("/", 1)[-1]
        attrs = None if is_partial(name) else read_attrs(cache.location, path)
        if attrs and isinstance(attrs.get("dataset"), dict) and "backbone" in attrs:
            return attrs
    return None
