"""HTML report and regression checks over a store filled with synthetic result files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.errors import ConfigError, ThresholdFailed
from validation import samples
from validation.metrics_store import MetricsStore
from validation.regression import DEFAULT_POLICY, NoisePolicy, check_regressions, describe_change
from validation.report import render_report, verdict_line

SECTIONS = (
    "Summary",
    "Equivalence",
    "Throughput over time",
    "Multi-GPU scaling",
    "End-to-end runs",
    "Packing efficiency",
    "Stage time breakdown",
    "Per-record scores",
    "Regressions",
    "Benchmarks",
    "Runs",
)


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    store = MetricsStore(root / "m.duckdb")
    store.ingest_files(samples.write_samples(root / "in"))
    (root / "e2e.json").write_text(json.dumps(samples.e2e_doc(20)))
    store.ingest_file(root / "e2e.json")
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
    # cosine histograms, throughput, scaling, end-to-end stages, packing, stage breakdown, benchmark trend
    assert len(images) == 7 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"https?://", html) and "<link" not in html and "<script" not in html
    assert "http://" not in html and "https://" not in html
    # the slowed-down ESM-2 stage of the last sample day is flagged against the previous run and the baseline
    flagged = re.findall(r'<tr class="flag">(.*?)</tr>', html, flags=re.S)
    assert len(flagged) == 2 and all("esm2_t36_3B_UR50D" in row for row in flagged)
    assert "PASS" in html and "1 regression</span> beyond noise" in html
    summary = html.split('id="summary"')[1].split("<h2")[0]
    # the latest *pipeline* run, not the validation or benchmark run ingested after it
    assert "Latest pipeline run" in summary and "20261120T020000Z-sample20" in summary
    assert "None" not in html.split('id="equivalence"')[1].split("<h2")[0]  # unset thresholds left out
    benchmarks = html.split('id="benchmarks"')[1].split("<h2")[0]
    assert "<td>bench_pipeline</td>" in benchmarks and "<td>pipeline</td>" in benchmarks  # module, group
    e2e = html.split('id="e2e"')[1].split("<h2")[0]
    # 1-GPU over 2-GPU wall time of the cold runs: 285 / 179
    assert "2 GPUs, cold cache" in e2e and f"{285 / 179:.4g}" in e2e and "esm2 tokens/s" in e2e


def test_regressions_against_previous_and_baseline(filled_db):
    rows = check_regressions(filled_db, threshold=0.10, baseline="20261118T020000Z-sample18")
    bad = [r for r in rows if r["regressed"]]
    assert {r["reference"] for r in bad} == {"previous", "baseline"}
    esm = next(r for r in bad if r["reference"] == "baseline")
    # sample days: 72000 tokens/s on day 18, 0.8 x 72000 on day 20 -> 20 % slower
    assert esm["reference_value"] == pytest.approx(72000.0) and esm["current_value"] == pytest.approx(57600.0)
    assert esm["slowdown"] == pytest.approx(0.20)
    previous = next(r for r in bad if r["reference"] == "previous")
    # against the median of the two runs before it (72000 and 72720 tokens/s)
    assert previous["reference_runs"] == 2 and previous["reference_value"] == pytest.approx(72360.0)
    # benchmark medians grew 2 % per day: a time, so slower is positive; within noise (5 % stddev)
    bench = [r for r in rows if r["source"] == "pytest-benchmark"]
    assert bench and all(
        r["slowdown"] == pytest.approx(1.04 / 1.01 - 1) and not r["regressed"] for r in bench
    )
    assert all(r["limit"] == pytest.approx(3 * 0.05) for r in bench)  # k x the runs' own spread
    assert not [r for r in check_regressions(filled_db, threshold=0.25) if r["regressed"]]
    with pytest.raises(ThresholdFailed, match="beyond noise"):
        check_regressions(filled_db, threshold=0.10, enforce=True)
    with pytest.raises(ConfigError, match="baseline"):
        check_regressions(filled_db, baseline="no-such-run")


def test_cli_ingest_and_report(tmp_path):
    paths = samples.write_samples(tmp_path / "in", days=(1, 2, 3))  # two earlier runs: the noise is known
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


def _store(tmp_path, docs) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "m.duckdb"
    for i, doc in enumerate(docs):
        path = tmp_path / f"doc{i}.json"
        path.write_text(json.dumps(doc))
        MetricsStore(db).ingest_file(path)
    return db


def _bench_runs(medians: list[float], spread: float = 0.01) -> list[dict]:
    docs = []
    for day, median in enumerate(medians, start=1):
        doc = samples.pytest_benchmark_doc(day, slow=median / 0.80)  # test_pipeline_end_to_end = median
        for bench in doc["benchmarks"]:
            bench["stats"]["stddev"] = bench["stats"]["median"] * spread
        docs.append(doc)
    return docs


def _verdict(rows, name="bench_pipeline.py::test_pipeline_end_to_end"):
    return next(r for r in rows if r["metric"].endswith(name) and r["reference"] == "previous")


def test_a_slowdown_within_the_spread_of_earlier_runs_is_noise(tmp_path):
    # the same 40 % slower last run: a regression after steady runs, noise after jumpy ones
    steady = _verdict(check_regressions(_store(tmp_path / "a", _bench_runs([1.0, 1.01, 0.99, 1.0, 1.4]))))
    jumpy = _verdict(check_regressions(_store(tmp_path / "b", _bench_runs([1.0, 1.3, 0.8, 1.25, 1.4]))))
    assert steady["regressed"] and steady["limit"] == pytest.approx(DEFAULT_POLICY.min_slowdown_cpu)
    assert not jumpy["regressed"] and jumpy["slowdown"] > DEFAULT_POLICY.min_slowdown_cpu
    assert jumpy["noise"] > 0.15 and jumpy["limit"] == pytest.approx(DEFAULT_POLICY.k * jumpy["noise"])


def test_gpu_runs_have_a_tighter_limit_than_cpu_runs(tmp_path):
    def runs(device_count):
        docs = [
            samples.run_record(day, esm_tps=tps) for day, tps in ((1, 72000.0), (2, 72000.0), (3, 64800.0))
        ]
        for doc in docs:
            doc["environment"]["device_count"] = device_count
        return docs

    gpu = check_regressions(_store(tmp_path / "gpu", runs(1)))
    cpu = check_regressions(_store(tmp_path / "cpu", runs(0)))
    esm_gpu, esm_cpu = (next(r for r in rows if "esm2" in r["metric"]) for rows in (gpu, cpu))
    assert esm_gpu["slowdown"] == pytest.approx(0.10) == esm_cpu["slowdown"]
    assert esm_gpu["regressed"] and not esm_cpu["regressed"]
    assert (esm_gpu["device_class"], esm_cpu["device_class"]) == ("gpu", "cpu")


def test_cli_and_nightly_share_one_default(filled_db, tmp_path, monkeypatch):
    from validation.steps import regression_step

    monkeypatch.setenv("VIRNUCPRO_METRICS_ROOT", str(Path(filled_db).parent))  # the step's path rule

    nightly = json.loads(Path(regression_step(filled_db, None, tmp_path / "run")).read_text())
    assert [r["regressed"] for r in nightly] == [r["regressed"] for r in check_regressions(filled_db)]
    out = tmp_path / "r.html"
    with pytest.raises(SystemExit) as exc:  # no --slowdown-threshold: the same default as the DAG
        main(["report", "--db", str(filled_db), "-o", str(out), "--fail-on-regression"])
    assert exc.value.code == ThresholdFailed.exit_code
    with pytest.raises(Exception, match="fraction"):
        NoisePolicy(min_slowdown_cpu=-1)


def test_speed_ups_read_as_speed_ups():
    assert describe_change(-1.073, higher_is_better=True) == "2.07x faster"  # throughput doubled
    assert describe_change(-0.5, higher_is_better=False) == "2.00x faster"  # half the time
    assert describe_change(-0.03, higher_is_better=False) == "3.1% faster"
    assert describe_change(0.12) == "12.0% slower"


def test_verdict_line_names_the_regressions(filled_db, tmp_path, monkeypatch):
    from validation.steps import regression_step

    monkeypatch.setenv("VIRNUCPRO_METRICS_ROOT", str(Path(filled_db).parent))  # the step's path rule

    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    (run / "validation" / "equivalence.json").write_text(json.dumps(samples.validate_doc(20)))
    regression_step(filled_db, None, run)
    line = verdict_line(run)
    assert line.startswith("equivalence PASS (6 comparisons); 1 regression beyond noise: stage embed esm2")


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
    assert "esm2_packed random:dnabert-s" in section  # one panel per script and model
    assert "runner.tokens_per_s_end_to_end @ NVIDIA H200" in section
    assert "123,456" in section
    assert "No data yet" not in section


def test_per_record_plot_from_a_run_directory_and_missing_db_refused(filled_db, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fixtures.prepared import seal_prepared

    run = tmp_path / "run"
    run.mkdir()
    (run / "chunked.fa").write_text(">r1_chunk_1\nACGT\n>r1_chunk_2\nACGT\n>r2_chunk_1\nACGT\n")
    seal_prepared(run)
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


def test_one_earlier_run_cannot_make_a_regression(tmp_path):
    # 30 % slower than the only earlier run: reported, but a run record has no spread of its own and
    # one earlier value gives none either, so the noise is unknown and nothing is flagged
    def esm(tps_by_day):
        docs = [samples.run_record(day, esm_tps=tps) for day, tps in tps_by_day]
        for doc in docs:
            doc["environment"]["device_count"] = 0
        rows = check_regressions(_store(tmp_path / str(len(docs)), docs))
        return next(r for r in rows if "esm2" in r["metric"] and r["reference"] == "previous")

    one = esm([(1, 72000.0), (2, 50400.0)])
    assert one["slowdown"] == pytest.approx(0.30) and one["noise"] is None
    assert not one["noise_known"] and not one["regressed"]
    two = esm([(1, 72000.0), (2, 72000.0), (3, 50400.0)])
    assert two["noise_known"] and two["regressed"]


def test_equivalence_table_shows_flips_their_margin_unenforced_labels_and_fp8_thresholds(tmp_path):
    doc = samples.validate_doc(21)
    fp8, bf16 = doc["results"][0], doc["results"][1]
    fp8.update(
        precision="fp8",
        label_agreement=0.9938,
        label_flips=38,
        chunk_label_agreement=0.9929,
        chunk_label_flips=18,
        flip_max_margin=0.0405,
        label_enforced=True,
        passed=False,
    )
    bf16.update(label_agreement=0.9995, label_flips=1, label_enforced=False)
    doc["passed"] = False
    doc["thresholds"]["fp8"] = {"min_cosine": 0.995, "min_mean_cosine": 0.999, "max_rel_l2": None}
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    MetricsStore(tmp_path / "m.duckdb").ingest_file(path)
    html = render_report(tmp_path / "m.duckdb", tmp_path / "r.html").read_text()
    table = html.split('id="equivalence"')[1].split("<h3")[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
    fp8_row = next(r for r in rows if "<td>fp8</td>" in r)
    assert "0.9938 (38)</td>" in fp8_row and "0.9929 (18)</td>" in fp8_row and ">0.0405</td>" in fp8_row
    bf16_row = next(r for r in rows if "<td>bf16</td>" in r and "esm2" in r)
    assert "0.9995 (1)*</td>" in bf16_row and "not enforced" in table
    # rows of documents without these fields (the sample's fp16 rows) show no count and no margin
    fp16_row = next(r for r in rows if "<td>fp16</td>" in r)
    assert "(" not in fp16_row and "*" not in fp16_row and ">–</td>" in fp16_row
    # the fp8 rows' own thresholds are listed flat, the unset one left out
    assert "fp8.min_cosine = 0.995" in table and "fp8.min_mean_cosine = 0.999" in table
    assert "None" not in table and "max_rel_l2" not in table
