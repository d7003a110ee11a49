"""Fine-tuning: the trained dense head back on the backbone, its last layers unfrozen.

- :mod:`~featurecache.finetuning.train`: the stage (``featurecache finetune``);
- :mod:`~featurecache.finetuning.run`: one run (:class:`~featurecache.finetuning.run.Run`),
  the same whatever the data comes from;
- :mod:`~featurecache.finetuning.source`: what a data source supplies to a run;
- :mod:`~featurecache.finetuning.images`: the source of decoded images, and
  :mod:`~featurecache.finetuning.data` their batches;
- :mod:`~featurecache.finetuning.cached`: the source of cached activation maps, and
  :mod:`~featurecache.finetuning.activations` their batches;
- :mod:`~featurecache.finetuning.model`: building the model (resizing, augmentation,
  preprocessing, backbone, head), unfreezing, compiling;
- :mod:`~featurecache.finetuning.callbacks`: the history and the stop on a signal;
- :mod:`~featurecache.finetuning.outputs`: what it writes beside the model, and returns.
"""
