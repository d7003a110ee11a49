"""Computing the missing batches in this process: the batch loop with a durable writer.

Each batch is made durable in its job's staging area (written, then recorded) on a
writer thread while the backbone runs the next one (:class:`StageWriter`); the batch
after that waits until it is, so at most one finished batch is not yet durable. A killed
run resumes at the last durable batch with the same batches, and its features are
bit-identical to an uninterrupted run's. SIGTERM or SIGINT stops the run once the batch
in hand is durable (:mod:`featurecache.stopping`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from featurecache.datasets import Listing
from featurecache.extraction.job import ExtractJob
from featurecache.extraction.loop import BatchOutput, BatchWork, run_batches
from featurecache.stopping import StopFlag, graceful_stop

log = logging.getLogger(__name__)


class StageWriter:
    """Writes each finished batch into its job's stage, then records it, on one thread.

    ``jobs`` maps each :class:`BatchWork`'s slot to its job (every job of the pass, also
    those with nothing left to compute, whose images count in :meth:`progress`).
    :meth:`write` waits for the previous batch to be durable before handing over the
    next, and on SIGTERM or SIGINT waits for this one too and stops the run (``stop``).
    :meth:`flush` waits for the last.
    """

    def __init__(self, jobs: dict[int, ExtractJob], stop: StopFlag, pool: ThreadPoolExecutor):
        self.jobs = jobs
        self.stop = stop
        self.pool = pool
        self._pending: list[Future[None]] = []

    def progress(self) -> str:
        """``"<done> of <total> images"`` over every job, for the stop message and the log."""
        jobs = self.jobs.values()
        done = sum(job.stage.records_done for job in jobs)
        return f"{done} of {sum(len(job.plan.compute) for job in jobs)} images"

    def write(self, work: BatchWork, number: int, output: BatchOutput) -> None:
        """Hand batch ``number`` to the writer thread once the previous one is durable.

        Raises
        ------
        Stopped
            On SIGTERM or SIGINT, once this batch is durable too.
        CacheError
            If the previous batch could not be written (a full disk).
        """
        self.flush()
        self._pending.append(self.pool.submit(_durable, self.jobs[work.slot], number, output))
        if self.stop.signal_name is not None:
            self.flush()
            self.stop.check(self.progress)

    def flush(self) -> None:
        """Wait until every batch handed over is durable; raise the writer's error here."""
        while self._pending:
            self._pending.pop().result()


def _durable(job: ExtractJob, number: int, output: BatchOutput) -> None:
    job.stage.write(number, output.arrays, output.keys)
    job.stage.record([number], output.skipped)
    job.n_computed += output.n_computed


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
    pending = {slot: job for slot, job in enumerate(jobs) if job.missing()}
    if not pending:
        return
    work = []
    for slot, job in pending.items():
        batches = job.missing()
        rows = [job.rows(b) for b in batches]
        work.append(BatchWork(job.built_extractor(), batches, rows, slot=slot))
    names = " + ".join(job.backbone.name for job in pending.values())
    start = time.perf_counter()
    with graceful_stop() as stop, ThreadPoolExecutor(1, thread_name_prefix="write") as pool:
        writer = StageWriter(dict(enumerate(jobs)), stop, pool)  # progress over every job
        stop.check(writer.progress)
        label = f"{listing.name} x {names}"
        profile = run_batches(listing, work, batch_size, writer, progress=progress, label=label)
        writer.flush()
    seconds = time.perf_counter() - start
    log.info(
        "%s x %s: %s in %.1f s: %s",
        listing.name,
        names,
        writer.progress(),
        seconds,
        profile.describe(),
    )
    for job in pending.values():
        job.compute_seconds = seconds
        job.profile = profile
