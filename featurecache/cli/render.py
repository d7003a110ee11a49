"""What the commands print: a JSON document with ``--json``, else these lines of text.

Results go to stdout; warnings (random weights, heads not trained yet) to stderr.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import typer

log = logging.getLogger("featurecache")


def emit(as_json: bool, payload: Any, text: Callable[[], None]) -> None:
    """``payload`` as JSON with ``--json``, else ``text()``."""
    if as_json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        text()


def backbones(rows: Sequence[dict[str, Any]]) -> None:
    typer.echo(f"{'name':<22}{'keras class':<20}{'size':>5}{'dim':>6}  preprocess_input")
    for r in rows:
        note = " (raw 0-255 in; rescaled inside)" if r["embedded_preprocessing"] else ""
        typer.echo(
            f"{r['name']:<22}{r['keras_name']:<20}{r['input_size']:>5}"
            f"{r['feature_dim']:>6}  {r['preprocess_input']}{note}"
        )


def extracted(results: Sequence[Any]) -> None:
    for r in results:
        if r.weights == "none":
            log.warning(
                "%s has RANDOM weights (weights=none): these features are for tests only",
                r.backbone,
            )
        splits = ", ".join(f"{k} {v}" for k, v in sorted(r.split_counts.items()))
        if r.cache_hit:
            typer.echo(
                f"cache hit: {r.dataset} x {r.backbone}: {r.n_images} images ({splits}) "
                f"already in {r.group}; nothing computed"
            )
        else:
            speed = f", {r.images_per_second:.1f} images/s" if r.images_per_second else ""
            resumed = f" + {r.n_resumed} resumed" if r.n_resumed else ""
            typer.echo(
                f"extracted {r.dataset} x {r.backbone}: {r.n_extracted} computed{resumed}, "
                f"{r.n_reused} reused ({r.n_new} new, {r.n_changed} changed, {r.n_removed} "
                f"removed) -> {r.n_images} images ({splits}) in {r.seconds:.1f} s{speed}, "
                f"engine {r.engine}; {r.group}"
            )
        for s in r.skipped:
            typer.echo(f"  skipped {s['reason']}")


def heads(results: Sequence[Any]) -> None:
    for r in results:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in r.accuracy.items())
        how = f"({r.seconds:.1f} s)" if r.trained else "(inputs unchanged: kept)"
        typer.echo(f"head {r.head} on {r.dataset} x {r.backbone}: top-1 {acc} {how} -> {r.folder}")


def _n(count: int, noun: str) -> str:
    """``1 outlier``, ``3 outliers``: a count and its noun."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def audited(results: Sequence[Any]) -> None:
    for r in results:
        if r.unchanged:
            typer.echo(f"audit of {r.dataset} x {r.backbone}: inputs unchanged, kept -> {r.page}")
            continue
        c = r.counts
        typer.echo(
            f"audit of {r.dataset} x {r.backbone} ({r.n_images:,} images): "
            f"{_n(c['leaks'], 'held-out image')} with a duplicate in train, "
            f"{_n(c['duplicate_pairs'], 'duplicate pair')} in "
            f"{_n(c['duplicate_groups'], 'group')}, "
            f"{_n(c['label_issues'], 'likely label error')}, {_n(c['outliers'], 'outlier')} "
            f"({sum(r.seconds.values()):.0f} s)"
        )
        for a in r.accuracy:
            without = "-" if a["without_leak"] is None else f"{a['without_leak']:.3f}"
            typer.echo(
                f"  head {a['head']}: test top-1 {a['test']:.3f}, {without} without the "
                f"{_n(a['n_leaked'], 'leaked test image')}"
            )
        typer.echo(f"  -> {r.page}")


def finetuned(results: Sequence[Any]) -> None:
    for r in results:
        per_epoch = (
            f", {sum(r.epoch_seconds) / len(r.epoch_seconds):.0f} s per epoch"
            if r.epoch_seconds
            else ""
        )
        typer.echo(
            f"fine-tuned {r.dataset} x {r.backbone} from {r.source} on the {r.device}: "
            + (
                f"parity check passed (max abs diff {r.parity_max_abs_diff:.1e}), "
                if r.parity_max_abs_diff is not None
                else "parity check skipped (no source image found), "
            )
            + f"{r.trainable_layers} layers trained, {r.epochs_run} epochs of "
            f"{r.steps_per_epoch} steps ({r.seconds:.0f} s{per_epoch}) -> {r.folder}"
        )
        if not r.improved:
            typer.echo(
                f"  validation loss never beat the start ({r.best_val_loss:.4f} vs "
                f"{r.start_val_loss:.4f}): kept the starting weights"
            )
        typer.echo(f"  {'split':<12}{'frozen head':>12}{'fine-tuned':>12}")
        for split, acc in r.finetuned_accuracy.items():
            before = r.frozen_accuracy.get(split)
            shown = f"{before:.3f}" if before is not None else "-"
            typer.echo(f"  {split:<12}{shown:>12}{acc:>12.3f}")


def refreshed(results: Sequence[Any]) -> None:
    for r in results:
        typer.echo(f"pipeline {r.pipeline}:")
        extracted(r.extract)
        heads(r.heads)
        audited(r.audit)


def collected(result: Any) -> None:
    verb = "would remove" if result.dry_run else "removed"
    for path in result.removed:
        typer.echo(f"{verb} {path}")
    typer.echo(
        f"{verb} {len(result.removed)} entries, {result.freed_bytes / 1e6:.2f} MB "
        f"({result.freed_bytes} bytes)"
    )


def verified(outcome: Any) -> None:
    for check in outcome.checks:
        n_chunks = sum(g.chunks for g in check.groups)
        typer.echo(f"{check.cache}: {len(check.groups)} groups, {n_chunks} chunks read")
        for item in check.all_damage:
            typer.echo(f"  DAMAGED {item.describe()}")
        for group in check.groups:
            if not group.checksummed and not group.damage:
                typer.echo(
                    f"  no checksums: {group.dataset}/{group.group} was written before chunks "
                    "carried them (verify --repair rewrites it with them)"
                )
    for repair in outcome.repairs:
        for line in repair.fixed:
            typer.echo(f"  repaired {line}")
        for item in repair.unrecoverable:
            typer.echo(
                f"  UNRECOVERABLE row {item['row']} of {item['dataset']}/{item['group']}: "
                f"its image {item['source']} is gone"
            )
        for line in repair.unrepaired:
            typer.echo(f"  NOT REPAIRED {line}")
        for item in repair.after.all_damage:
            typer.echo(f"  still DAMAGED {item.describe()}")
    if outcome.clean:
        typer.echo("clean" if not outcome.repairs else "clean after repair")
    elif not outcome.repairs:
        typer.echo(
            "damage found: run `featurecache verify --repair CACHE` to recompute it from the "
            "images (see README, 'Checking the cache')"
        )


def predictions(results: Sequence[Any]) -> None:
    for p in results:
        if p.error:
            typer.echo(f"{p.source}\tSKIPPED\t{p.error}")
        else:
            typer.echo(f"{p.source}\t{p.label}\t{p.probability:.4f}")


def cache_info(root: Any, groups: Sequence[dict[str, Any]]) -> None:
    if not groups:
        typer.echo(f"{root}: empty cache")
    for g in groups:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(g["split_counts"].items()))
        prov = g["provenance"]
        sha = prov["weights"]["sha256"] or "none (random weights)"
        dtype = prov["backbone"].get("dtype", "float32")
        typer.echo(f"{g['dataset']}/{g['group']} ({prov.get('generation', '')})")
        typer.echo(
            f"  backbone   {g['backbone']} ({g['input_size']} px, {g['pooling']} "
            f"pooling, {prov['preprocessing']})"
        )
        typer.echo(f"  weights    {g['weights']} sha256 {sha[:16]}")
        typer.echo(
            f"  images     {g['n_images']} ({splits}); features {g['feature_dim']}-d {dtype}"
        )
        typer.echo(f"  on disk    {g['bytes'] / 1e6:.2f} MB; created {g['created']}")
        v = prov["versions"]
        backend = v.get("backend", "tensorflow")  # caches from before backends were named
        typer.echo(
            f"  versions   featurecache {v['featurecache']}, keras {v['keras']} on "
            f"{backend} {v.get(backend)}"
        )
        if g["skipped"]:
            typer.echo(f"  skipped    {len(g['skipped'])} image(s):")
            for s in g["skipped"]:
                typer.echo(f"    {s['reason']}")


def report(collection: Any, paths: dict[str, Any]) -> None:
    for block in collection.blocks:
        for run in block.heads:
            test = run.metrics.get("test", {})
            shown = f"test top-1 {test['accuracy']:.3f}" if test else ""
            if "accuracy_ci95" in test:
                shown += " [{:.3f}, {:.3f}]".format(*test["accuracy_ci95"])
            typer.echo(f"{block.dataset:<18} {block.backbone['name']:<14} {run.name:<22} {shown}")
    for block in collection.blocks:
        for head in block.missing:
            typer.echo(f"warning: {block.dataset}: head {head!r} is not trained yet", err=True)
    typer.echo(f"wrote {paths['markdown']} and {paths['html']}")
