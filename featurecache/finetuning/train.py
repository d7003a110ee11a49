"""Stage 4: fine-tune the backbone's last block under the trained dense head.

For each data set x backbone of a pipeline, starting from the dense head that
``train-head`` wrote (``[finetune] head``, default ``dense``):

1. build raw images -> backbone -> head (:func:`featurecache.finetuning.model.build_model`);
2. **parity check**: on a few training images, the rebuilt model's output must
   equal the head's output on the cached features (max absolute difference
   <= 1e-4; 5e-3 on features cached as float16), in float32 on a GPU too (the model
   is then built again in mixed precision to train); otherwise the cache and the live
   model disagree
   (preprocessing, weights or library versions) and fine-tuning stops with a
   :class:`~featurecache.errors.ParityError`;
3. unfreeze the last block, compile with SGD, train with augmentation and early
   stopping on validation loss, a checkpoint after every epoch
   (``keras.callbacks.BackupAndRestore``): an interrupted run resumes at the last
   finished epoch. The best epoch's weights are kept (``restore_best_weights``); if no
   epoch beats the starting model's validation loss, the starting weights are kept,
   so fine-tuning never hands back a model worse on validation than it was given;
4. write ``model.keras`` (raw pixels in, probabilities out; ``featurecache
   predict`` takes its folder), ``history.json`` and the records and plots of
   :mod:`featurecache.finetuning.outputs`.

One :class:`~featurecache.finetuning.run.Run` takes these steps; its
:class:`~featurecache.finetuning.source.Source` supplies what depends on the data:
:class:`~featurecache.finetuning.images.ImageSource` the above. With ``[finetune]
source = "cache"`` (``--from-cache``),
:class:`~featurecache.finetuning.cached.CachedActivations` trains the layers after the
backbone's ``finetune_from`` and the head on the cached activation maps: the parity
check then compares the assembled model on raw pixels with the tail on the cached
activations, before and after training.
"""

from __future__ import annotations

from collections.abc import Callable

from featurecache.cache import Cache, recipe
from featurecache.config import Pipeline
from featurecache.datasets import ObjectIndex, list_dataset
from featurecache.errors import CacheError
from featurecache.finetuning.cached import CachedActivations
from featurecache.finetuning.images import ImageSource
from featurecache.finetuning.outputs import FinetuneResult
from featurecache.finetuning.run import Run
from featurecache.finetuning.source import Source
from featurecache.runs import RunLayout, output_errors

#: ``[finetune] source`` -> its :class:`~featurecache.finetuning.source.Source`, made
#: from ``(ft, cache, group, listing, backbone)``.
SOURCE_CLASSES: dict[str, Callable[..., Source]] = {
    "images": ImageSource,
    "cache": CachedActivations,
}


def finetune(pipeline: Pipeline, *, progress: bool = False) -> list[FinetuneResult]:
    """Fine-tune every data set x backbone of ``pipeline`` (see the module docstring).

    Returns
    -------
    list of FinetuneResult
        One per data set x backbone, in the pipeline's order.

    Raises
    ------
    CacheError
        If the features are missing (run ``featurecache run``), or, from the cache,
        the group holds no activation maps; its subclasses
        :class:`~featurecache.errors.NoTrainedHeadError` if the dense head is missing
        (``featurecache train-head``), :class:`~featurecache.errors.WeightsChangedError`
        if the backbone's weights are not the features' and
        :class:`~featurecache.errors.ParityError` if the rebuilt model does not
        reproduce the cache (extract again).
    ConfigError
        If the starting head is not a dense head, ``unfreeze`` matches no layer, or
        ``source = "cache"`` and the backbone has no ``finetune_from``.
    """
    cache = Cache(pipeline.cache)
    layout = RunLayout.of(pipeline)
    results = []
    for dataset in pipeline.datasets:
        listing = list_dataset(dataset, ObjectIndex(cache.object_index_url(dataset.name)))
        try:
            for backbone in pipeline.backbones:
                found = recipe.find_group(cache, dataset.name, backbone)
                if found is None:
                    raise CacheError(
                        f"no cached features for {dataset.name} x {backbone.name}; run "
                        "`featurecache run` with the same pipeline first"
                    )
                ft = pipeline.finetune
                source = SOURCE_CLASSES[ft.source](ft, cache, found.group, listing, backbone)
                run = Run(ft, source, backbone, layout).start()
                with output_errors(layout.output):
                    results.append(run.train(progress).finish())
        finally:
            listing.close()
    return results
