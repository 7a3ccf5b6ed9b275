"""HTML report and regression checks over a store filled with synthetic result files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.errors import ConfigError, ThresholdFailed
from validation import samples
from validation.metrics_store import MetricsStore
from validation.regression import check_regressions
from validation.report import render_report

SECTIONS = (
    "Summary",
    "Equivalence",
    "Throughput over time",
    "Multi-GPU scaling",
    "Packing efficiency",
    "Stage time breakdown",
    "Per-record scores",
    "Regressions",
    "Benchmarks",
    "Runs",
)
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    store = MetricsStore(root / "m.duckdb")
    store.ingest_files(samples.write_samples(root / "in"))
    return root / "m.duckdb"


@pytest.fixture(scope="module")
def full_html(filled_db) -> Path:
    return render_report(filled_db, filled_db.parent / "r.html", baseline="20261118T020000Z-sample18")


def _headings(html: str) -> list[str]:
    return re.findall(r"<h2 id=\"\w+\">([^<(]+)", html)


def test_empty_store_renders_no_data_messages(tmp_path):
    out = render_report(tmp_path / "empty.duckdb", tmp_path / "r.html")
    html = out.read_text()
    assert [h.strip() for h in _headings(html)] == list(SECTIONS)
    assert html.count("No data yet") >= 8
    assert "data:image/png" not in html


def test_full_report_is_self_contained(full_html):
    html = full_html.read_text()
    assert {h.strip() for h in _headings(html)} >= set(SECTIONS)
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    # cosine histograms, throughput, scaling, packing, stage breakdown
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"https?://", html) and "<link" not in html and "<script" not in html
    assert "http://" not in html and "https://" not in html
    # the slowed-down ESM-2 stage of the last sample day is flagged against the previous run and the baseline
    flagged = re.findall(r'<tr class="flag">(.*?)</tr>', html, flags=re.S)
    assert len(flagged) == 2 and all("esm2_t36_3B_UR50D" in row for row in flagged)
    assert "PASS" in html and "2 regressions" in html


def test_regressions_against_previous_and_baseline(filled_db):
    rows = check_regressions(filled_db, threshold=0.10, baseline="20261118T020000Z-sample18")
    bad = [r for r in rows if r["regressed"]]
    assert {r["reference"] for r in bad} == {"previous", "baseline"}
    esm = next(r for r in bad if r["reference"] == "baseline")
    # sample days: 72000 tokens/s on day 18, 0.8 x 72000 on day 20 -> 20 % slower
    assert esm["reference_value"] == pytest.approx(72000.0) and esm["current_value"] == pytest.approx(57600.0)
    assert esm["slowdown"] == pytest.approx(0.20)
    # benchmark medians grew 2 % per day: a time, so slower is positive, and under the threshold
    bench = [r for r in rows if r["source"] == "pytest-benchmark"]
    assert bench and all(
        r["slowdown"] == pytest.approx(1.04 / 1.02 - 1) and not r["regressed"] for r in bench
    )
    assert not [r for r in check_regressions(filled_db, threshold=0.25) if r["regressed"]]
    with pytest.raises(ThresholdFailed, match="slowed down"):
        check_regressions(filled_db, threshold=0.10, enforce=True)
    with pytest.raises(ConfigError, match="baseline"):
        check_regressions(filled_db, baseline="no-such-run")


def test_cli_ingest_and_report(tmp_path):
    paths = samples.write_samples(tmp_path / "in", days=(1, 2))
    db = tmp_path / "m.duckdb"
    for _ in range(2):
        with pytest.raises(SystemExit) as exc:
            main(["ingest", "--db", str(db), *map(str, paths)])
        assert exc.value.code == 0
    assert MetricsStore(db).row_counts()["runs"] == len(paths)
    out = tmp_path / "r.html"
    with pytest.raises(SystemExit) as exc:
        main(["report", "--db", str(db), "-o", str(out), "--fail-on-regression"])
    assert exc.value.code == ThresholdFailed.exit_code and out.exists()


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install chromium); the headless render check needs it",
)
def test_renders_in_headless_chromium(full_html, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    html = full_html
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'prof'}",
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        html.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    # not blank: many distinct colours (text, badges, plot lines) and a good share of non-white pixels
    flat = (pixels.reshape(-1, 3) * 255).astype(np.uint8)
    assert len(np.unique(flat, axis=0)) > 50
    assert (flat.min(axis=1) < 200).mean() > 0.01


def test_throughput_section_includes_gpu_script_figures_per_model(tmp_path):
    import json

    from pipeline.core.atomic import atomic_write_text

    doc = samples.device_benchmark_doc(day=21)
    doc["config"] = {"model": "random:dnabert-s"}
    doc["runner"] = {"tokens_per_s_end_to_end": 123456.0}
    path = tmp_path / "device.json"
    atomic_write_text(path, json.dumps(doc))
    MetricsStore(tmp_path / "m.duckdb").ingest_files([path])
    html = render_report(tmp_path / "m.duckdb", tmp_path / "r.html").read_text()
    section = html.split('id="throughput"')[1].split("<h2")[0]
    assert "esm2_packed random:dnabert-s runner.tokens_per_s_end_to_end @ NVIDIA H200" in section
    assert "123,456" in section
    assert "No data yet" not in section


def test_per_record_plot_from_a_run_directory_and_missing_db_refused(filled_db, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    run.mkdir()
    (run / "chunked.fa").write_text(">r1_chunk_1\nACGT\n>r1_chunk_2\nACGT\n>r2_chunk_1\nACGT\n")
    pq.write_table(
        pa.table(
            {
                "id": ["r1_chunk_1F1", "r1_chunk_2R2", "r2_chunk_1F3"],
                "score_others": pa.array([0.2, 0.9, 0.4], pa.float32()),
                "score_virus": pa.array([0.8, 0.1, 0.6], pa.float32()),
            }
        ),
        run / "frame_scores.parquet",
    )
    html = render_report(filled_db, tmp_path / "r.html", run_dir=run).read_text()
    section = html.split('id="records"')[1].split("<h2")[0]
    assert str(run) in section and section.count('src="data:image/png;base64,') == 1
    without = (
        render_report(filled_db, tmp_path / "r2.html").read_text().split('id="records"')[1].split("<h2")[0]
    )
    assert "No data yet" in without and "data:image" not in without

    from pipeline.cli import cli

    result = CliRunner().invoke(
        cli,
        ["report", "--db", str(tmp_path / "typo.duckdb"), "-o", str(tmp_path / "x.html")],
        standalone_mode=False,
    )
    assert isinstance(result.exception, ConfigError) and "typo.duckdb does not exist" in str(result.exception)
    assert not (tmp_path / "typo.duckdb").exists() and not (tmp_path / "x.html").exists()
