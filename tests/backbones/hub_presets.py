"""Tiny, randomly initialised keras-hub presets of two families, saved offline with
``save_to_preset``: a CNN (ResNet) and a ViT (DINOv2), 32 x 32 pixels, ImageNet
normalisation in the image converter as the real presets have it (pixels 0-255)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = (32, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = [1.0 / 255.0 / s for s in IMAGENET_STD]
OFFSET = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]


def save_tiny_presets(folder: Path) -> dict[str, Path]:
    """Write ``folder/tiny_cnn`` and ``folder/tiny_vit``; returns them by family."""
    from featurecache.backbones.hub import import_keras_hub

    keras_hub = import_keras_hub()
    import keras

    keras.utils.set_random_seed(0)
    shape = (*IMAGE_SIZE, 3)
    cnn = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],  # ResNet's first stack must have 64 filters
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=shape,
    )
    cnn_converter = keras_hub.layers.ResNetImageConverter(
        image_size=IMAGE_SIZE, scale=SCALE, offset=OFFSET, antialias=True
    )
    vit = keras_hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=32,
        num_heads=2,
        intermediate_dim=64,
        num_register_tokens=0,
        image_shape=shape,
        position_embedding_shape=shape,
    )
    vit_converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=IMAGE_SIZE, scale=SCALE, offset=OFFSET, interpolation="bicubic"
    )
    paths = {"cnn": folder / "tiny_cnn", "vit": folder / "tiny_vit"}
    for (backbone, converter), path in zip(
        ((cnn, cnn_converter), (vit, vit_converter)), paths.values(), strict=True
    ):
        backbone.save_to_preset(str(path))
        converter.save_to_preset(str(path))
    return paths
