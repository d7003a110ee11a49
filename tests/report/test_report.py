"""`featurecache report` on real runs: catvnoncat and a fingers subset, real weights.

The report's numbers must be the numbers in each head's metrics.json: the tables
are parsed back from the Markdown and compared, and the JSON twin is compared
value for value.
"""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import CLASSES, invoke, link_fingers, make_image

REPO = Path(__file__).resolve().parents[2]
FINGERS_PER_CLASS = {"train": 24, "test": 10}


@pytest.fixture(scope="module")
def fingers_root(tmp_path_factory, datasets_dir) -> Path:
    """A data root whose fingers/ holds the first images of each class (links to the real PNGs)."""
    root = tmp_path_factory.mktemp("fingers-root")
    link_fingers(datasets_dir, root / "fingers", FINGERS_PER_CLASS)
    return root


@pytest.fixture(scope="module")
def report(catvnoncat_run, fingers_root, tmp_path_factory):
    work, first, _ = catvnoncat_run
    assert first.exit_code == 0, first.output
    fingers = invoke(
        "run",
        REPO / "pipelines" / "fingers.toml",
        "--data-root",
        fingers_root,
        "--cache",
        work / "cache",
        "--output",
        work / "runs",
    )
    assert fingers.exit_code == 0, fingers.output
    out = tmp_path_factory.mktemp("report") / "results"
    result = invoke(
        "report",
        REPO / "pipelines" / "catvnoncat.toml",
        REPO / "pipelines" / "fingers.toml",
        "--output",
        work / "runs",
        "--report",
        out,
    )
    assert result.exit_code == 0, result.output
    return out, result


def _head_tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """{'<dataset>/<head>': {split: [images, top-1, ci, balanced, log loss]}} from the text."""
    tables: dict[str, dict[str, list[str]]] = {}
    dataset = head = None
    for line in markdown.splitlines():
        if m := re.match(r"## (\S+) x ", line):
            dataset = m.group(1)
        elif m := re.match(r"### (\S+) \(", line):
            head = f"{dataset}/{m.group(1)}"
            tables[head] = {}
        elif head and (m := re.match(r"\| (train|validation|test) \| (.*) \|$", line)):
            tables[head][m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return tables


@pytest.mark.real_weights
def test_report_numbers_are_the_metrics_on_disk(report):
    out, _ = report
    markdown = out.with_suffix(".md").read_text()
    doc = json.loads(out.with_suffix(".json").read_text())
    tables = _head_tables(markdown)
    heads = {(b["dataset"], h["name"]): h for b in doc["blocks"] for h in b["heads"]}
    assert {f"{d}/{h}" for d, h in heads} == set(tables)
    assert {d for d, _ in heads} == {"catvnoncat", "fingers"}
    assert {h for _, h in heads} == {"logistic_regression", "linear_svm", "knn", "dense"}
    for (dataset, name), head in heads.items():
        metrics = json.loads((Path(head["folder"]) / "metrics.json").read_text())
        for split, m in metrics.items():
            assert head["metrics"][split]["accuracy"] == m["accuracy"]
            assert head["metrics"][split]["accuracy_ci95"] == m["accuracy_ci95"]
            row = tables[f"{dataset}/{name}"][split]
            low, high = m["accuracy_ci95"]
            assert row == [
                str(m["n_images"]),
                f"{m['accuracy']:.3f}",
                f"[{low:.3f}, {high:.3f}]",
                f"{m['balanced_accuracy']:.3f}",
                f"{m['log_loss']:.3f}",
            ]
            assert low <= m["accuracy"] <= high
    fingers_test = heads[("fingers", "logistic_regression")]["metrics"]["test"]
    assert fingers_test["n_images"] == 6 * FINGERS_PER_CLASS["test"]


@pytest.mark.real_weights
def test_report_summary_sets_our_figure_beside_the_write_up(report):
    out, result = report
    markdown = out.with_suffix(".md").read_text()
    doc = json.loads(out.with_suffix(".json").read_text())
    summary = {
        cells[0]: cells
        for line in markdown.split("## Summary")[1].split("\n## ")[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| data set", "| ---"))
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(summary) == {"catvnoncat", "fingers"}
    for block in doc["blocks"]:
        best = max(block["heads"], key=lambda h: h["metrics"]["test"]["accuracy"])
        cells = summary[block["dataset"]]
        assert cells[2] == best["name"]
        assert cells[3].startswith(f"{best['metrics']['test']['accuracy']:.3f} [")
        assert cells[4] == "-"  # not audited
    cat = summary["catvnoncat"][6].split("<br>")
    assert cat[1].startswith("0.86 small CNN trained from scratch (+")
    assert float(cat[1].split("(")[1].rstrip(")")) >= 0.0  # at least the published figure
    fingers = summary["fingers"][6]  # 4 classes, alpha 0.35, validation accuracy
    assert "theirs on validation, ours on test" in fingers and "not like for like" in fingers
    assert "CV top-1" in markdown and "Reproduce: `featurecache run" in markdown
    assert "wrote" in result.output


@pytest.mark.real_weights
def test_report_html_embeds_its_figures_and_markdown_links_them(report):
    out, _ = report
    markdown = out.with_suffix(".md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) >= 2 * 4 + 2  # a confusion matrix per head, curves per dense, a plot each
    for link in links:
        assert (out.parent / link).stat().st_size > 1000
    html = out.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") == len(links)
    assert "<table>" in html and "featurecache results" in html


def test_report_without_runs_says_what_to_do(tmp_path):
    result = invoke("report", REPO / "pipelines" / "fingers.toml", "--output", tmp_path)
    assert result.exit_code == 1
    assert "nothing to report" in result.output and "featurecache run" in result.output
    missing = invoke("report", tmp_path / "nope.toml")
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.real_weights
def test_report_on_a_cache_folder_finds_the_heads_trained_from_it(report, catvnoncat_run, tmp_path):
    work, _, _ = catvnoncat_run
    result = invoke(
        "report", work / "cache", "--output", work / "runs", "--report", tmp_path / "r", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {b["dataset"] for b in doc["blocks"]} == {"catvnoncat", "fingers"}
    assert all(len(b["heads"]) == 4 for b in doc["blocks"])
    assert doc["files"]["markdown"] == str(tmp_path / "r.md")


FINETUNED_PIPELINE = """
name = "tiny"
cache = "{cache}"
output = "{runs}"
[[datasets]]
name = "tiny"
path = "{data}"
[[backbones]]
name = "mobilenet_v2"
weights = "none"
input_size = 32
finetune_from = true
[[heads]]
name = "dense"
kind = "dense"
params = {{ epochs = 2 }}
[finetune]
epochs = 1
batch_size = 8
"""


def test_report_json_holds_the_fine_tuned_models_the_markdown_shows(tmp_path):
    """A real (tiny, random-weights) fine-tuning from the cache: its numbers are in the
    report's JSON as in its Markdown, not only in the Markdown."""
    for split, n in (("train", 10), ("test", 3)):
        for pattern, (name, color) in enumerate(CLASSES.items()):
            for i in range(n):
                make_image(tmp_path / "data" / split / name / f"{i}.png", color, pattern=pattern)
    toml = tmp_path / "tiny.toml"
    paths = {name: tmp_path / name for name in ("cache", "runs", "data")}
    toml.write_text(FINETUNED_PIPELINE.format(**paths))
    ran = invoke("run", toml)
    assert ran.exit_code == 0, ran.output
    finetuned = invoke("finetune", toml, "--from-cache")
    assert finetuned.exit_code == 0, finetuned.output
    out = tmp_path / "report"
    assert invoke("report", toml, "--report", out).exit_code == 0

    markdown = out.with_suffix(".md").read_text()
    [block] = json.loads(out.with_suffix(".json").read_text())["blocks"]
    [model] = block["finetuned"]
    metrics = json.loads((Path(model["folder"]) / "metrics.json").read_text())
    assert model["source"] == "cache" and model["started_from_head"] == "dense"
    shown = markdown.split(f"### fine-tuned from the cache ({model['name']})")[1]
    for split, m in metrics.items():
        assert model["metrics"][split]["accuracy"] == m["accuracy"]
        assert f"| {split} | {m['n_images']} | {m['accuracy']:.3f} |" in shown
    assert f"fine-tuned from the cache ({model['name']}) {model['seconds']:.1f} s" in markdown
    tested = [*block["heads"], model]
    best = max(tested, key=lambda r: r["metrics"]["test"]["accuracy"])
    kind = "finetuned" if best is model else "frozen"
    assert block["best"] == {"name": best["name"], "kind": kind}  # the summary's best
