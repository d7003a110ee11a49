"""Computing the missing batches in this process: decoding threads feed the backbone.

Each batch is made durable in its job's staging area (written, then recorded) before
the next, so a killed run resumes at the last finished batch with the same batches,
and its features are bit-identical to an uninterrupted run's. SIGTERM or SIGINT stops
the run after the batch in hand is durable (:mod:`featurecache.stopping`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from featurecache.datasets import Listing
from featurecache.extraction.job import BatchOutput, BatchWork, ExtractJob, compute_batches
from featurecache.stopping import graceful_stop


def run_local(
    listing: Listing, jobs: Sequence[ExtractJob], batch_size: int, *, progress: bool = False
) -> None:
    """Compute every job's missing batches, decoding each image once per input size.

    Fills in each job's ``n_computed`` and ``compute_seconds`` (wall time of the pass).

    Raises
    ------
    Stopped
        On SIGTERM or SIGINT, after the batch being computed is durable in staging.
    """
    work = [job.work() for job in jobs]
    work = [w for w in work if w.batches]
    if not work:
        return
    names = " + ".join(w.owner.backbone.name for w in work)
    start = time.perf_counter()
    total = sum(len(job.plan.compute) for job in jobs)

    def done() -> str:
        return f"{sum(job.stage.records_done for job in jobs)} of {total} images"

    with graceful_stop() as stop:

        def record(work: BatchWork, number: int, output: BatchOutput) -> None:
            job: ExtractJob = work.owner
            job.stage.write(number, output.arrays, output.keys)
            job.stage.record([number], output.skipped)
            job.n_computed += output.n_computed
            stop.check(done)

        stop.check(done)
        compute_batches(
            listing, work, batch_size, record, progress=progress, label=f"{listing.name} x {names}"
        )
    for item in work:
        item.owner.compute_seconds = time.perf_counter() - start
