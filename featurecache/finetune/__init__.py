"""Fine-tuning: the trained dense head back on the backbone, its last block unfrozen.

- :mod:`~featurecache.finetune.model`: building the model (resizing, augmentation,
  preprocessing, backbone, head), unfreezing, compiling;
- :mod:`~featurecache.finetune.data`: the images, in batches;
- :mod:`~featurecache.finetune.train`: the stage (``featurecache finetune``);
- :mod:`~featurecache.finetune.outputs`: what it writes beside the model.
"""
