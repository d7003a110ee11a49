"""Fine-tuning: the trained dense head back on the backbone, its last block unfrozen.

- :mod:`~featurecache.finetuning.model`: building the model (resizing, augmentation,
  preprocessing, backbone, head), unfreezing, compiling;
- :mod:`~featurecache.finetuning.data`: the images, in batches;
- :mod:`~featurecache.finetuning.train`: the stage (``featurecache finetune``);
- :mod:`~featurecache.finetuning.outputs`: what it writes beside the model.
"""
