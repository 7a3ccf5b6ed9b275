"""Hostile DAG parameters: no parameter names code to run, every path stays inside its configured
root (``VIRNUCPRO_INPUT_ROOT``, ``VIRNUCPRO_OUTPUT_ROOT``, ``VIRNUCPRO_METRICS_ROOT``), a finished run is
never overwritten, ``gpu_slots`` is bounded by the ``gpu`` pool, and no error echoes file contents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fixtures.airflow  # noqa: F401  (the Airflow environment, before airflow is imported)
import pytest

from pipeline.core.errors import ConfigError, VirNucProError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.fa"


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("inputs", "outputs", "metrics", "elsewhere")}
    for path in paths.values():
        path.mkdir()
    monkeypatch.setenv("VIRNUCPRO_INPUT_ROOT", str(paths["inputs"]))
    monkeypatch.setenv("VIRNUCPRO_OUTPUT_ROOT", str(paths["outputs"]))
    monkeypatch.setenv("VIRNUCPRO_METRICS_ROOT", str(paths["metrics"]))
    monkeypatch.setenv("VIRNUCPRO_GPU_POOL_SIZE", "2")
    (paths["inputs"] / "in.fa").write_bytes(DEMO.read_bytes())
    return paths


def _params(roots: dict[str, Path], **extra) -> dict:
    return {
        "input_path": str(roots["inputs"] / "in.fa"),
        "demo": True,
        "gpu_slots": 0,
        "chunk_size": 300,
        "output_dir": "",
        "metrics_db": "",
        "resume": False,
        **extra,
    }


# ---- benchmark step: code execution --------------------------------------------------------------------


def _hostile_conftest(directory: Path) -> Path:
    marker = directory / "PWNED"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "conftest.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (directory / "test_x.py").write_text("def test_x():\n    pass\n")
    return marker


@pytest.mark.parametrize("value", ["DIR", "DIR/test_x.py", "--version", "-p", "--rootdir=DIR", "all -x"])
def test_benchmark_step_runs_no_code_named_by_a_param(tmp_path, roots, value):
    from validation.steps import benchmark_step

    hostile = tmp_path / "hostile"
    marker = _hostile_conftest(hostile)
    with pytest.raises(ConfigError):
        benchmark_step(roots["outputs"] / "run", value.replace("DIR", str(hostile)), False)
    assert not marker.exists()


def test_nightly_dag_has_no_path_param_for_benchmarks():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "nightly_params_probe", REPO / "dags" / "virnucpro_nightly.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "benchmarks_path" not in module.PARAMS
    suite = module.PARAMS["benchmark_suite"].schema
    assert set(suite["enum"]) <= {"all", "prepare", "packing", "esm2", "dnabert", "pipeline"}
    for name in ("gpu_slots",):
        assert module.PARAMS[name].schema.get("maximum") is not None


def test_benchmark_command_points_at_the_projects_own_suites(roots):
    from validation.steps import BENCHMARK_SUITES, benchmark_command

    for suite in BENCHMARK_SUITES:
        cmd = benchmark_command(roots["outputs"] / "run" / "b.json", suite)
        targets = [Path(a) for a in cmd if a.startswith(str(REPO / "benchmarks"))]
        assert targets and all(t.exists() for t in targets)


# ---- paths inside roots -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["../escape", "sub/../../escape", "/etc", "ELSEWHERE", "LINK", "LINK/deeper", "~/x", "OUTROOT"],
)
def test_output_dir_outside_the_root_is_refused(roots, value):
    from pipeline.airflow_tasks import output_dir_for

    (roots["outputs"] / "link").symlink_to(roots["elsewhere"])
    value = (
        value.replace("ELSEWHERE", str(roots["elsewhere"] / "run"))
        .replace("LINK", str(roots["outputs"] / "link"))
        .replace("OUTROOT", str(roots["outputs"]))
    )
    with pytest.raises(ConfigError, match="VIRNUCPRO_OUTPUT_ROOT"):
        output_dir_for({"output_dir": value}, "manual__1", roots["outputs"])
    assert not any(roots["elsewhere"].iterdir())


def test_output_dir_inside_the_root_is_accepted(roots):
    from pipeline.airflow_tasks import output_dir_for

    inside = output_dir_for({"output_dir": "runs/a"}, "manual__1", roots["outputs"])
    assert Path(inside) == (roots["outputs"] / "runs" / "a").resolve()
    default = output_dir_for({"output_dir": ""}, "manual__2026", roots["outputs"])
    assert Path(default).parent == roots["outputs"].resolve()


def test_default_output_dir_lands_in_the_configured_root(roots):
    from pipeline.airflow_tasks import output_dir_for

    default = Path(output_dir_for({"output_dir": ""}, "../../x", roots["elsewhere"]))
    assert default.parent == roots["outputs"].resolve() and ".." not in default.parts


@pytest.mark.parametrize("value", ["../escape.duckdb", "/tmp/vnp-anywhere.duckdb", "LINK/m.duckdb"])
def test_metrics_db_outside_the_root_is_refused(roots, value):
    from validation.steps import ingest_step, regression_step, report_step

    (roots["metrics"] / "link").symlink_to(roots["elsewhere"])
    value = value.replace("LINK", str(roots["metrics"] / "link"))
    for call in (
        lambda: ingest_step([], value),
        lambda: regression_step(value, 0.1, roots["outputs"] / "run"),
        lambda: report_step(value, roots["outputs"] / "run"),
    ):
        with pytest.raises(ConfigError, match="VIRNUCPRO_METRICS_ROOT"):
            call()
    assert not any(roots["elsewhere"].iterdir())
    assert not Path("/tmp/vnp-anywhere.duckdb").exists()


@pytest.mark.parametrize("value", ["/etc/passwd", "../elsewhere/in.fa", "LINK"])
def test_input_outside_the_root_is_refused(roots, value):
    from pipeline.run.steps import prepare_step

    (roots["elsewhere"] / "in.fa").write_bytes(DEMO.read_bytes())
    (roots["inputs"] / "link.fa").symlink_to(roots["elsewhere"] / "in.fa")
    value = value.replace("LINK", str(roots["inputs"] / "link.fa"))
    if value.startswith("../"):
        value = str(roots["inputs"] / value)
    out = roots["outputs"] / "run"
    with pytest.raises(ConfigError, match="VIRNUCPRO_INPUT_ROOT"):
        prepare_step(_params(roots, input_path=value), out)
    assert not (out / "chunked.fa").exists()


def test_non_fasta_input_error_does_not_echo_the_file(roots):
    from pipeline.run.steps import prepare_step

    secret = roots["inputs"] / "secret.txt"
    secret.write_text("SECRET-TOKEN-0123456789abcdef the first line of a private file\n")
    with pytest.raises(VirNucProError) as info:
        prepare_step(_params(roots, input_path=str(secret)), roots["outputs"] / "run")
    assert "SECRET" not in str(info.value) and "0123456789" not in str(info.value)


# ---- finished runs, gpu_slots ----------------------------------------------------------------------------


def test_prepare_refuses_a_finished_run(roots):
    from pipeline.run.steps import prepare_step

    run = roots["outputs"] / "run"
    run.mkdir()
    (run / "run_record.json").write_text(json.dumps({"schema": "virnucpro.run/1"}))
    (run / "chunked.fa").write_text(">keep\nACGT\n")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="finished run"):
            prepare_step(_params(roots, resume=resume), run)
    assert (run / "chunked.fa").read_text() == ">keep\nACGT\n"


def test_prepare_refuses_another_runs_unfinished_directory(roots):
    from pipeline.run.steps import prepare_step

    run = roots["outputs"] / "run"
    prepare_step(_params(roots), run, run_id="dag:first")
    before = (run / "chunked.fa").read_bytes()
    with pytest.raises(VirNucProError, match="dag:first"):
        prepare_step(_params(roots), run, run_id="dag:second")
    assert (run / "chunked.fa").read_bytes() == before
    prepare_step(_params(roots), run, run_id="dag:first")  # a retry of the same run is fine
    prepare_step(_params(roots, resume=True), run, run_id="dag:third")  # resume takes it over


@pytest.mark.parametrize("slots", [3, 5])  # pool size 2; 10**9 is the schema test's (today it wrote shards)
def test_gpu_slots_above_the_pool_are_refused(roots, slots):
    from pipeline.run.steps import prepare_step, shard_step

    run = roots["outputs"] / "run"
    with pytest.raises(ConfigError, match="VIRNUCPRO_GPU_POOL_SIZE"):
        prepare_step(_params(roots, gpu_slots=slots), run)
    assert not (run / "chunked.fa").exists()
    prepare_step(_params(roots), run)
    with pytest.raises(ConfigError, match="VIRNUCPRO_GPU_POOL_SIZE"):
        shard_step(run, slots)
    assert not (run / "shards").exists() or len(os.listdir(run / "shards")) <= 2


def test_gpu_slots_schema_has_a_maximum():
    import importlib.util

    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    for name in ("virnucpro_predict", "virnucpro_nightly"):
        spec = importlib.util.spec_from_file_location(f"{name}_probe", REPO / "dags" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        schema = module.PARAMS["gpu_slots"].schema
        assert schema["maximum"] <= 1024
        with pytest.raises(ParamValidationError):
            Param(0, **{k: v for k, v in schema.items() if k != "__type"}).resolve(10**9)
