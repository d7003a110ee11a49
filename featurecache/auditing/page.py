"""``audit.html``: the findings as a page people look at, from ``audit.json``'s dict.

One self-contained HTML file (styles inline, no script, thumbnails and the map as files
beside it). Every value is escaped (``html.escape``): sources and class names come from
users' folders.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 34px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 4px 10px; border: 1px solid #ddd; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px; width: 176px; font-size: 12px; }
.pair { display: flex; gap: 8px; border: 1px solid #ddd; border-radius: 6px; padding: 6px;
  font-size: 12px; }
.pair > div { width: 164px; }
.card img, .pair img { width: 160px; height: 160px; object-fit: contain; background: #f7f7f7;
  image-rendering: pixelated; display: block; }
.missing { width: 160px; height: 160px; background: #fbeaea; color: #8a1f1f; font-size: 11px;
  display: flex; align-items: center; text-align: center; padding: 6px; box-sizing: border-box; }
.src { color: #666; word-break: break-all; font-size: 11px; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7f3b; }
.what { color: #444; max-width: 900px; margin: 8px 0; }
"""


def render_page(findings: dict[str, Any]) -> str:
    """The HTML page of an audit (``findings`` as written to ``audit.json``)."""
    s = findings["summary"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Audit: {escape(s['dataset'])} x {escape(s['backbone'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Audit of {escape(s['dataset'])} with {escape(s['backbone'])}</h1>",
        _overview(findings),
        _accuracy(findings["heads"], s["splits"]),
        _leaks(findings),
        _groups(findings),
        _label_issues(findings),
        _mistakes(findings["heads"]),
        _outliers(findings),
        _map(findings),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _overview(findings: dict[str, Any]) -> str:
    s = findings["summary"]
    settings = findings["settings"]
    splits = ", ".join(f"{n:,} {split}" for split, n in s["splits"].items())
    return (
        f"<p>{s['n_images']:,} images ({splits}), {len(s['class_names'])} classes; cache group "
        f"<code>{escape(s['group'])}</code>, {escape(s['generation'])}. Computed from the cached "
        "bottleneck features alone; each thumbnail's source was read at audit time and checked "
        "against its cached content key.</p>"
        "<table><tr><th>finding</th><th>count</th></tr>"
        + "".join(
            f"<tr><td>{label}</td><td class='num'>{s[key]:,}</td></tr>"
            for key, label in (
                ("leaks", "held-out images with a duplicate in train (the leak)"),
                ("duplicate_pairs", "duplicate pairs (exact or near)"),
                ("duplicate_groups", "duplicate groups"),
                ("label_issues", "likely label errors"),
                ("outliers", "outliers"),
            )
        )
        + "</table>"
        f"<p class='what'>Near-duplicates: cosine similarity of L2-normalised features "
        f"&ge; {settings['threshold']} ({escape(settings['search'])}).</p>"
    )


def _accuracy(heads: list[dict[str, Any]], splits: dict[str, int]) -> str:
    if "test" not in splits:
        return "<h2>Test top-1</h2><p>This data set has no test split: no head was run.</p>"
    if not heads:
        return "<h2>Test top-1</h2><p>No trained head was found for this cache group.</p>"
    rows = []
    for h in heads:
        a = h["accuracy"]
        drop = "" if a["without_leak"] is None else f"{a['without_leak']:.3f}"
        stale = " (trained on an older generation)" if h["stale"] else ""
        rows.append(
            f"<tr><td>{escape(h['head'])}{stale}</td><td class='num'>{a['test']:.3f}</td>"
            f"<td class='num'>{drop}</td><td class='num'>{a['n_leaked']:,} of {a['n_test']:,}"
            f"</td></tr>"
        )
    return (
        "<h2>Test top-1, with and without the leak</h2><p class='what'>Each trained head's "
        "top-1 accuracy on the whole test split, and on the test split without the images "
        "that have a duplicate in train: a head can look better than it is when it was, in "
        "effect, trained on its test images.</p><table><tr><th>head</th><th>test top-1</th>"
        "<th>test top-1 without leaked images</th><th>leaked test images</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _image(image: dict[str, Any], caption: str = "", card: bool = True) -> str:
    if image.get("thumb"):
        picture = f"<img src='{escape(image['thumb'])}' alt='{escape(image['label'])}'>"
    else:
        picture = f"<div class='missing'>{escape(image.get('missing', 'not shown'))}</div>"
    text = (
        f"<div>{caption}</div><div>{escape(image['split'])} &middot; {escape(image['label'])}"
        f"</div><div class='src'>{escape(image['source'])}</div>"
    )
    return f"<div class='card'>{picture}{text}</div>" if card else f"<div>{picture}{text}</div>"


def _section(title: str, what: str, items: Iterable[str], empty: str, count: int) -> str:
    """A finding's heading, explanation and thumbnails; ``empty`` when ``count`` is 0."""
    body = "".join(items)
    if body:
        shown = f"<div class='cards'>{body}</div>"
    elif count:
        shown = f"<p>{count:,} found, none shown here (thumbnails = 0): see the CSV files.</p>"
    else:
        shown = f"<p class='good'>{empty}</p>"
    return f"<h2>{title}</h2><div class='what'>{what}</div>{shown}"


def _shown(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "thumb" in r]


def _leaks(findings: dict[str, Any]) -> str:
    items = (
        f"<div class='pair'>{_image(x, 'held out', card=False)}"
        f"{_image(x['train'], _cosine(x['similarity']), card=False)}</div>"
        for x in _shown(findings["leaks"])
    )
    return _section(
        f"The leak: {len(findings['leaks']):,} held-out images with a duplicate in train",
        "A test (or validation) image next to its most similar training image. The same photo "
        "in both splits measures memory, not generalisation.",
        items,
        "No held-out image has a duplicate in train.",
        len(findings["leaks"]),
    )


def _cosine(similarity: float) -> str:
    return f"train &middot; cosine {similarity:.3f}"


def _groups(findings: dict[str, Any]) -> str:
    groups = findings["duplicates"]["groups"]
    items = (
        "<div class='pair'>" + "".join(_image(i, card=False) for i in g if "thumb" in i) + "</div>"
        for g in groups
        if any("thumb" in i for i in g)
    )
    return _section(
        f"Duplicate groups: {len(groups):,}",
        "Images that are the same file or the same photo re-encoded, resized, cropped or "
        "mirrored, within or across splits. Keep one of each group.",
        items,
        "No duplicates.",
        len(groups),
    )


def _label_issues(findings: dict[str, Any]) -> str:
    found = findings["label_issues"]
    if "skipped" in found:
        return f"<h2>Likely label errors</h2><p>Not computed: {escape(found['skipped'])}.</p>"
    what = (
        "Images whose given label disagrees with what a model that never saw them predicts "
        "(cleanlab's confident learning on out-of-sample probabilities), the least likely "
        "label first. Check each one: relabel it, or drop it if it fits no class. The "
        f"model behind them ({found['folds']}-fold cross-validated logistic regression on "
        f"the features) has top-1 {found['out_of_sample_top1']:.3f}: the lower it is, the "
        "more of the flags are its own doubt rather than wrong labels, so start at the top."
    )
    items = (
        _image(
            x,
            f"given <span class='bad'>{escape(x['label'])}</span> &rarr; suggested "
            f"<b>{escape(x['suggested'])}</b> &middot; quality {x['quality']:.3f}",
        )
        for x in _shown(found["issues"])
    )
    return _section(
        f"Likely label errors: {found['n_flagged']:,}",
        what,
        items,
        "No likely label error was found.",
        found["n_flagged"],
    )


def _mistakes(heads: list[dict[str, Any]]) -> str:
    out = []
    for h in heads:
        pairs = "".join(
            f"<tr><td>{escape(c['given'])}</td><td>{escape(c['predicted'])}</td>"
            f"<td class='num'>{c['count']}</td></tr>"
            for c in h["confusions"]
        )
        items = (
            _image(
                x,
                f"predicted <span class='bad'>{escape(x['predicted'])}</span> at "
                f"{x['confidence']:.2f}",
            )
            for x in _shown(h["mistakes"])
        )
        out.append(
            _section(
                f"Head {escape(h['head'])}: its {h['n_mistakes']:,} test mistakes, most confident "
                "first",
                "Confidently wrong predictions are often label errors in the test split, or "
                "images unlike the training data."
                + (
                    " The pairs of classes it confuses most:<table><tr><th>given</th>"
                    f"<th>predicted</th><th>images</th></tr>{pairs}</table>"
                    if pairs
                    else ""
                ),
                items,
                "No mistakes on the test split.",
                h["n_mistakes"],
            )
        )
    return "".join(out)


def _outliers(findings: dict[str, Any]) -> str:
    items = (_image(x, f"outlier score {x['score']:.3f}") for x in _shown(findings["outliers"]))
    return _section(
        "Outliers",
        "The images least like their nearest neighbours (one minus the mean cosine similarity "
        "to them): often corrupt files, off-topic photos or a class with too few examples.",
        items,
        "No outliers.",
        len(findings["outliers"]),
    )


def _map(findings: dict[str, Any]) -> str:
    if not findings.get("map"):
        return ""
    return (
        "<h2>Map of the embeddings</h2><p class='what'>Each dot is an image, placed so that "
        "images with similar features are near each other; colours are the given classes. "
        "A dot among another class's colour is worth a look.</p>"
        f"<img src='{escape(findings['map'])}' alt='2-D map of the embeddings' "
        "style='max-width:100%'>"
    )
