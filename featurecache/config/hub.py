"""keras-hub backbones, named ``hub:<preset>``: what the configuration knows of them.

``<preset>`` is a keras-hub preset name (``hub:dinov2_small``, ``hub:clip_vit_base_patch16``,
``hub:efficientnet_b0_ra_imagenet``: downloaded from Kaggle or Hugging Face by keras-hub
at first use) or a local preset folder (what ``Backbone.save_to_preset`` writes). They are
built by :mod:`featurecache.backbones.hub`; nothing here imports keras-hub or Keras.

Differences from the registered ``keras.applications`` backbones:

- **weights** are the preset's own (``"imagenet"``, the default, means them); ``"none"``
  builds the preset's architecture with random weights (seeded), for tests;
- **pooling** ``"auto"`` (the default) is the family's own pooled output: the CLS token
  of a ViT-style model (DINOv2, ViT), the image embedding of CLIP / SigLIP, global
  average pooling of a CNN's feature map; ``"max"`` is global max pooling (CNNs only);
- **input size** defaults to the preset's image converter's ``image_size`` (read from a
  local folder's ``image_converter.json``), else 224;
- extraction runs on every engine (``auto`` included: the ONNX export of keras-hub's
  Functional models goes through tf2onnx like a ``keras.applications`` model's; a family
  whose export fails stays on Keras under ``auto``), at any precision;
- CNN families (a feature map out) take ``taps`` and ``finetune_from`` (layer names of
  the keras-hub model) and fine-tune; :data:`HUB_FAMILIES` gives a family's last block
  and default cache point where known.
"""

from __future__ import annotations

import json
from pathlib import Path

from featurecache.errors import ConfigError, UnknownBackboneError

PREFIX = "hub:"
DEFAULT_INPUT_SIZE = 224
#: Files of a preset folder that say what the model is; ``metadata.json`` is left out (it
#: holds the date the preset was saved).
IDENTITY_FILES = ("config.json", "image_converter.json", "preprocessor.json")


def preset_files(folder: str | Path, *, with_weights: bool) -> list[str]:
    """The files of a keras-hub preset folder that identify it: the identity files
    (:data:`IDENTITY_FILES`) present and, ``with_weights``, its ``*.weights.h5`` /
    ``*.weights.json`` files. Their :func:`featurecache.hashing.sha256_files` is a ``hub:``
    backbone's weights identity, as a weights file's SHA-256 is for the others."""
    folder = Path(folder)
    names = [n for n in IDENTITY_FILES if (folder / n).is_file()]
    if with_weights:
        names += [p.name for p in folder.iterdir() if ".weights." in p.name]
    return names


def is_hub(name: str) -> bool:
    return name.strip().lower().startswith(PREFIX)


def preset_of(name: str) -> str:
    """The preset part of ``hub:<preset>``: a name, or an absolute folder path.

    Raises
    ------
    UnknownBackboneError
        If the preset is empty, or looks like a path and is not a preset folder.
    """
    preset = name.strip()[len(PREFIX) :].strip()
    if not preset:
        raise UnknownBackboneError(
            "a keras-hub backbone needs a preset: hub:dinov2_small, or hub:<preset folder>"
        )
    if "://" not in preset and ("/" in preset or preset.startswith((".", "~"))):
        folder = Path(preset).expanduser()
        if not (folder / "config.json").is_file():
            raise UnknownBackboneError(
                f"{name!r}: {folder} is not a keras-hub preset folder (no config.json); "
                "save one with backbone.save_to_preset(folder), or name a preset"
            )
        return str(folder.resolve())
    return preset


def preset_input_size(preset: str) -> int:
    """The square side of the preset's image converter, if a local folder says it."""
    path = Path(preset, "image_converter.json")
    if not path.is_file():
        return DEFAULT_INPUT_SIZE
    try:
        size = json.loads(path.read_text())["config"]["image_size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable image converter ({exc})") from exc
    if not size or len(set(size)) != 1:
        return DEFAULT_INPUT_SIZE
    return int(size[0])


#: Per keras-hub backbone class (``config.json``'s ``class_name``): the layers fine-tuning
#: opens (regular expressions, as the registry's ``last_block``) and the default cache
#: point (``finetune_from = true``), a layer whose output alone feeds every later layer.
#: EfficientNet's ``MBConvBlock`` layers hold their residual ``Add``, so a block's output
#: is a clean cut; ``block5c_`` is 14x14x112 at 224 px, as ``efficientnet_b0``'s
#: ``block5c_add``.
HUB_FAMILIES = {
    "EfficientNetBackbone": {"last_block": ("block7", "top_"), "cache_point": "block5c_"},
}


def preset_family(preset: str) -> dict:
    """:data:`HUB_FAMILIES`' entry for a local preset folder's backbone class; ``{}`` for
    other classes and for presets named, not local (their class is known once built)."""
    path = Path(preset, "config.json")
    if not path.is_file():
        return {}
    try:
        name = json.loads(path.read_text()).get("class_name")
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable preset configuration ({exc})") from exc
    return HUB_FAMILIES.get(name, {})
