"""Computing the missing batches in this process: decoding threads feed the backbone.

Each batch is made durable in its job's staging area (written, then recorded) on a
writer thread while the backbone runs the next one; the batch after that waits until it
is, so at most one finished batch is not yet durable. A killed run resumes at the last
durable batch with the same batches, and its features are bit-identical to an
uninterrupted run's. SIGTERM or SIGINT stops the run once the batch in hand is durable
(:mod:`featurecache.stopping`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from featurecache.datasets import Listing
from featurecache.extraction.job import BatchOutput, BatchWork, ExtractJob, compute_batches
from featurecache.stopping import graceful_stop

log = logging.getLogger(__name__)


def run_local(
    listing: Listing, jobs: Sequence[ExtractJob], batch_size: int, *, progress: bool = False
) -> None:
    """Compute every job's missing batches, decoding each image once per input size.

    Fills in each job's ``n_computed``, ``compute_seconds`` (wall time of the pass) and
    ``profile`` (of the pass).

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

    pending: list[Future[None]] = []

    def durable(job: ExtractJob, number: int, output: BatchOutput) -> None:
        job.stage.write(number, output.arrays, output.keys)
        job.stage.record([number], output.skipped)
        job.n_computed += output.n_computed

    def wait() -> None:
        while pending:
            pending.pop().result()  # raises the writer's error (a full disk) here

    with graceful_stop() as stop, ThreadPoolExecutor(1, thread_name_prefix="write") as writer:

        def record(work: BatchWork, number: int, output: BatchOutput) -> None:
            wait()
            pending.append(writer.submit(durable, work.owner, number, output))
            if stop.signal_name is not None:
                wait()
                stop.check(done)

        stop.check(done)
        profile = compute_batches(
            listing, work, batch_size, record, progress=progress, label=f"{listing.name} x {names}"
        )
        wait()
    seconds = time.perf_counter() - start
    log.info("%s x %s: %s in %.1f s: %s", listing.name, names, done(), seconds, profile.describe())
    for item in work:
        item.owner.compute_seconds = seconds
        item.owner.profile = profile
