"""The Airflow DAGs: parsing, parameters, structure, and in-process runs on tiny demo models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.airflow import DAGS, REPO, demo_conf, load_dagbag, write_tiny_fasta

POOLS = {"default_pool", "gpu"}


@pytest.fixture(scope="module")
def dagbag():
    return load_dagbag(known_pools=POOLS)


def test_dag_folder_parses_without_torch_and_without_warnings():
    # A fresh interpreter: parsing the DAG files must not import torch (the scheduler and the
    # DAG processor parse them every few seconds).
    code = f"""
import sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(DAGS)!r}, known_pools=set({sorted(POOLS)!r}))
print("ERRORS", bag.import_errors)
print("WARNINGS", [w.message for w in bag.dag_warnings])
print("DAGS", sorted(bag.dag_ids))
print("TORCH", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(
        line.split(" ", 1)
        for line in out.stdout.splitlines()
        if line.split(" ", 1)[0] in {"ERRORS", "WARNINGS", "DAGS", "TORCH"}
    )
    assert lines["ERRORS"] == "{}"
    assert lines["WARNINGS"] == "[]"
    assert lines["DAGS"] == "['virnucpro_nightly', 'virnucpro_predict']"
    assert lines["TORCH"] == "False"


def test_missing_gpu_pool_is_reported(dagbag):
    dagbag.known_pools = {"default_pool"}
    try:
        messages = " ".join(w.message for w in dagbag.dag_warnings)
    finally:
        dagbag.known_pools = POOLS
    assert "gpu" in messages


def test_predict_dag_structure(dagbag):
    dag = dagbag.dags["virnucpro_predict"]
    order = ["prepare", "shard", "embed", "classify", "merge", "record"]
    assert sorted(t.task_id for t in dag.tasks) == sorted(order)
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    embed = dag.get_task("embed")
    assert embed.pool == "gpu" and embed.queue == "gpu"
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(embed, MappedOperator)
    for name in (
        "input_path",
        "output_dir",
        "chunk_size",
        "esm_model",
        "dnabert_model",
        "classifier",
        "precision",
        "attention",
        "gpu_slots",
        "resume",
        "demo",
    ):
        assert name in dag.params


def test_nightly_dag_structure(dagbag):
    dag = dagbag.dags["virnucpro_nightly"]
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.catchup is False
    report, gate = dag.get_task("report"), dag.get_task("gate")
    # The report is rendered whatever failed before it; the gate fails the run after it.
    assert report.trigger_rule == "all_done"
    assert "gate" in report.downstream_task_ids
    assert gate.downstream_task_ids == set()
    assert {"equivalence", "regressions", "report"} <= gate.upstream_task_ids


@pytest.mark.parametrize(
    "bad",
    [
        {"precision": "fp4"},
        {"attention": "magic"},
        {"gpu_slots": -1},
        {"chunk_size": 2},
        {"resume": "yes please"},
    ],
)
def test_bad_params_are_rejected(dagbag, airflow_db, tmp_path, bad):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["virnucpro_predict"]
    conf = {"input_path": str(tmp_path / "x.fa"), **bad}
    with pytest.raises(ParamValidationError):
        dag.test(run_conf=conf)
    assert not (tmp_path / "x.fa").exists()


def test_empty_input_is_refused(dagbag, airflow_db):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["virnucpro_predict"]
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"input_path": ""})


@pytest.mark.parametrize("dag_id", ["virnucpro_predict", "virnucpro_nightly"])
def test_form_defaults_are_valid_and_every_param_is_described(dagbag, dag_id):
    # What the UI's trigger form submits untouched: every default, the optional fields empty (null).
    dag = dagbag.dags[dag_id]
    defaults = {name: param.value for name, param in dag.params.items()}
    dag.params.validate()  # raises ParamValidationError on a default the form would refuse
    assert defaults["demo"] is True and defaults["gpu_slots"] == 0  # CPU demo run by default
    assert Path(defaults["input_path"]).is_file()
    for name, param in dag.params.items():
        schema = param.schema
        assert schema.get("title") and param.description, f"{dag_id}.{name} is not described"
        if param.value is None:  # optional: the form must accept leaving it empty
            assert "null" in schema["type"], f"{dag_id}.{name} defaults to null but its type refuses it"
    for name in ("esm_model", "dnabert_model", "classifier"):
        assert "demo uses" in dag.params.get_param(name).description
    for name in ("output_dir", "metrics_db"):
        assert defaults[name] is None


def test_nightly_unpause_schedules_nothing_before_the_next_night(dagbag):
    from datetime import UTC, datetime

    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    dag = dagbag.dags["virnucpro_nightly"]
    assert dag.catchup is False and dag.max_active_runs == 1
    timetable = decode_timetable(encode_timetable(dag.timetable))  # the scheduler's view of it
    # A first unpause (no run yet): the first scheduled run is in the future, not "the last 02:00".
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False),
    )
    assert info is not None and info.run_after > datetime.now(UTC)
    assert (info.run_after.hour, info.run_after.minute) == (2, 0)


def test_deterministic_errors_fail_now_others_keep_their_retries():
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.airflow_tasks import run_step
    from pipeline.core.errors import ConfigError, FileSystemError, VirNucProError, WorkerFailedError

    def fails(exc):
        raise exc

    with pytest.raises(AirflowFailException, match="ConfigError: gpu_slots"):
        run_step(fails, ConfigError("gpu_slots=2 but this worker sees no CUDA device"))
    for transient, seen in (
        (WorkerFailedError("worker died"), WorkerFailedError),
        (MemoryError(), VirNucProError),
        (OSError(28, "No space left on device", "/out/x"), FileSystemError),
        (RuntimeError("CUDA error: an illegal memory access"), RuntimeError),
    ):
        with pytest.raises(seen) as info:
            run_step(fails, transient)
        assert not isinstance(info.value, AirflowFailException)


@pytest.mark.slow
def test_a_configuration_error_fails_its_task_without_retries(dagbag, airflow_db, tmp_path):
    dag = dagbag.dags["virnucpro_predict"]
    conf = demo_conf(tmp_path / "missing.fa", tmp_path / "run", tmp_path / "m.duckdb")
    run = dag.test(run_conf=conf)
    assert str(getattr(run.state, "value", run.state)) == "failed"
    prepare = next(ti for ti in run.get_task_instances() if ti.task_id == "prepare")
    assert str(getattr(prepare.state, "value", prepare.state)) == "failed"
    assert prepare.try_number == 1 and prepare.max_tries >= 1  # it had retries and did not use them


def _run_state(dag, conf):
    run = dag.test(run_conf=conf)
    return str(getattr(run.state, "value", run.state))


@pytest.mark.slow
def test_predict_dag_matches_cli_demo(dagbag, airflow_db, tmp_path):
    fasta = write_tiny_fasta(tmp_path / "tiny.fa")
    run_dir, cli_dir, db = tmp_path / "dag", tmp_path / "cli", tmp_path / "metrics.duckdb"
    dag = dagbag.dags["virnucpro_predict"]
    assert _run_state(dag, demo_conf(fasta, run_dir, db)) == "success"

    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "virnucpro"),
            "predict",
            str(fasta),
            "-o",
            str(cli_dir),
            "--demo",
            "--chunk-size",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "record_summary.tsv"):
        dag_text = (run_dir / name).read_text()
        assert dag_text == (cli_dir / name).read_text(), name
    assert len((run_dir / "prediction_results.txt").read_text().splitlines()) > 1  # frames were scored

    record = json.loads((run_dir / "run_record.json").read_text())
    assert record["schema"] == "virnucpro.run/1" and record["kind"] == "predict"
    stages = [row["stage"] for row in record["stages"]]
    assert stages[:2] == ["prepare", "shard"] and stages[-2:] == ["classify", "merge"]
    assert stages.count("embed") >= 2

    from validation.metrics_store import MetricsStore

    runs = MetricsStore(db).query("SELECT run_id, kind FROM runs")
    assert runs["run_id"].tolist() == [record["run_id"]]

    # A retried embed task (try 2) resumes: same embeddings, same predictions.
    from pipeline.run.steps import classify_step, embed_step, merge_step

    before = (run_dir / "prediction_results.txt").read_bytes()
    params = demo_conf(fasta, run_dir, db) | {
        "chunk_size": 60,
        "precision": "auto",
        "attention": "auto",
        "resume": False,
        "classifier": "random",
    }
    shard = sorted((run_dir / "shards").glob("shard-*.parquet"))[0]
    embed_step(params, run_dir, str(shard), map_index=0, try_number=2)
    classify_step(params, run_dir, [str(shard)])
    merge_step(run_dir)
    assert (run_dir / "prediction_results.txt").read_bytes() == before


@pytest.mark.slow
def test_nightly_dag_writes_report(dagbag, airflow_db, tmp_path):
    fasta = write_tiny_fasta(tmp_path / "tiny.fa")
    run_dir, db = tmp_path / "nightly", tmp_path / "metrics.duckdb"
    dag = dagbag.dags["virnucpro_nightly"]
    conf = demo_conf(fasta, run_dir, db, skip_benchmarks=True, validation_sequences=4)
    assert _run_state(dag, conf) == "success"
    html = (run_dir / "report.html").read_text()
    assert "<html" in html.lower()
    from validation.metrics_store import MetricsStore

    kinds = set(MetricsStore(db).query("SELECT kind FROM runs")["kind"])
    assert "predict" in kinds and len(kinds) >= 2  # the run record and the validation run


# ---- the task-level helpers the DAGs call ------------------------------------------------------


def test_device_for_slot():
    from pipeline.core.errors import ConfigError
    from pipeline.run.steps import device_for_slot

    assert device_for_slot(map_index=0, gpu_slots=0, cuda_devices=0) == "cpu"
    assert device_for_slot(map_index=3, gpu_slots=4, cuda_devices=4) == "cuda:3"
    assert device_for_slot(map_index=3, gpu_slots=4, cuda_devices=2) == "cuda:1"
    assert device_for_slot(map_index=-1, gpu_slots=1, cuda_devices=1) == "cuda:0"
    with pytest.raises(ConfigError, match="gpu_slots=2"):
        device_for_slot(map_index=0, gpu_slots=2, cuda_devices=0)


def test_predict_config_from_params(tmp_path):
    from pipeline.run.steps import predict_config

    base = {
        "input_path": str(tmp_path / "in.fa"),
        "chunk_size": 300,
        "esm_model": "esm2_t33_650M_UR50D",
        "dnabert_model": "zhihan1996/DNABERT-S",
        "classifier": "300_model.pth",
        "precision": "auto",
        "attention": "sdpa",
        "gpu_slots": 2,
        "resume": False,
        "demo": False,
    }
    cfg = predict_config(base, tmp_path / "out")
    assert (cfg.esm.model, cfg.esm.precision, cfg.dnabert.attention) == (
        "esm2_t33_650M_UR50D",
        "bf16",  # auto on GPUs (docs/esm2.md: bf16 measured faster than fp16 at cosine >= 0.9999)
        "sdpa",
    )
    fp8 = predict_config(base | {"precision": "fp8"}, tmp_path / "out")
    assert fp8.esm.precision == "fp8" and fp8.dnabert.precision == "bf16"
    assert cfg.chunk_size == 300 and cfg.classifier == "300_model.pth" and cfg.gpus == ()
    demo = predict_config(base | {"demo": True, "gpu_slots": 0}, tmp_path / "out")
    assert demo.esm.model.startswith("random:") and demo.dnabert.model.startswith("random:")
    assert demo.classifier == "random" and demo.esm.precision == "fp32"


def test_gpu_executor_config():
    from pipeline.run.steps import gpu_executor_config

    assert gpu_executor_config("LocalExecutor") == {}
    assert gpu_executor_config("CeleryExecutor") == {}
    pytest.importorskip("kubernetes", reason="needs apache-airflow-providers-cncf-kubernetes")
    pod = gpu_executor_config("KubernetesExecutor")["pod_override"]
    container = pod.spec.containers[0]
    assert container.name == "base"
    assert container.resources.limits == {"nvidia.com/gpu": "1"}


def test_gate_step(tmp_path):
    from pipeline.core.errors import ThresholdFailed
    from validation.steps import gate_step

    row = {"comparison": "precision", "model": "m", "precision": "bf16", "cos_min": 0.9999, "passed": True}
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"schema": "virnucpro.validate/1", "passed": True, "results": [row]}))
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "schema": "virnucpro.validate/1",
                "passed": False,
                "results": [row | {"passed": False, "cos_min": 0.91}],
            }
        )
    )
    regressions = tmp_path / "regressions.json"
    regressions.write_text(json.dumps([{"metric": "embed", "regressed": False, "slowdown": 0.01}]))
    gate_step(str(ok), str(regressions))  # nothing failed: no exception
    with pytest.raises(ThresholdFailed, match="cos_min=0.91"):
        gate_step(str(bad), str(regressions))
    regressions.write_text(
        json.dumps(
            [
                {
                    "metric": "embed",
                    "regressed": True,
                    "slowdown": 0.4,
                    "reference_value": 10.0,
                    "current_value": 6.0,
                }
            ]
        )
    )
    with pytest.raises(ThresholdFailed, match="40% worse"):
        gate_step(str(ok), str(regressions))


@pytest.mark.slow
def test_predict_dag_without_frames_writes_header_only_outputs(dagbag, airflow_db, tmp_path):
    # Every frame of this record has a stop codon: nothing to embed, the mapped embed is skipped.
    fasta = tmp_path / "stops.fa"
    fasta.write_text(">stops\n" + "TTAA" * 30 + "\n")
    run_dir = tmp_path / "run"
    dag = dagbag.dags["virnucpro_predict"]
    assert _run_state(dag, demo_conf(fasta, run_dir, tmp_path / "m.duckdb")) == "success"
    lines = (run_dir / "prediction_results.txt").read_text().splitlines()
    assert lines == ["Sequence_ID\tPrediction\tscore1\tscore2"]


@pytest.mark.slow
def test_nightly_threshold_failure_fails_the_run_after_the_report(dagbag, airflow_db, tmp_path):
    fasta = write_tiny_fasta(tmp_path / "tiny.fa")
    run_dir = tmp_path / "nightly"
    dag = dagbag.dags["virnucpro_nightly"]
    # bf16 embeddings never reach cosine 1.0 against fp32 for every frame: the check must fail.
    conf = demo_conf(
        fasta,
        run_dir,
        tmp_path / "metrics.duckdb",
        skip_benchmarks=True,
        validation_sequences=4,
        min_cosine=1.0,
    )
    run = dag.test(run_conf=conf)
    assert str(getattr(run.state, "value", run.state)) == "failed"
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
    assert states["report"] == "success" and states["gate"] == "failed"
    assert states["record"] == "success"
    assert (run_dir / "report.html").is_file()
    doc = json.loads((run_dir / "validation" / "equivalence.json").read_text())
    assert doc["passed"] is False


def test_nightly_regression_step_compares_with_a_pinned_baseline(tmp_path):
    from validation import samples
    from validation.metrics_store import MetricsStore
    from validation.steps import regression_step

    db = tmp_path / "m.duckdb"
    MetricsStore(db).ingest_files(samples.write_samples(tmp_path / "in"))
    rows = json.loads(
        Path(regression_step(db, None, tmp_path / "run", baseline="20261118T020000Z-sample18")).read_text()
    )
    assert {r["reference"] for r in rows} == {"previous", "baseline"}
    assert any(r["regressed"] and r["reference"] == "baseline" for r in rows)
