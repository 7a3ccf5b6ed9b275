from pathlib import Path

import pytest

from pipeline.core.config import EncoderConfig, PredictConfig, Settings, parse_gpus
from pipeline.core.errors import ConfigError


def test_settings_defaults_without_environment():
    from dataclasses import replace

    s = Settings.from_env({})
    assert replace(s, compile_cache_dir=None) == Settings()
    assert s.metrics_db == Path("reports/metrics.duckdb")
    assert s.compile_cache_dir == Path.home() / ".cache" / "virnucpro" / "compile"


def test_compile_cache_dir_is_one_run_independent_place():
    assert Settings.from_env({"XDG_CACHE_HOME": "/x/cache"}).compile_cache_dir == Path(
        "/x/cache/virnucpro/compile"
    )
    assert Settings.from_env(
        {"VIRNUCPRO_COMPILE_CACHE": "/y/cc", "XDG_CACHE_HOME": "/x"}
    ).compile_cache_dir == Path("/y/cc")


def test_settings_read_every_variable():
    s = Settings.from_env(
        {
            "VIRNUCPRO_DISABLE_COMPILE": "1",
            "VIRNUCPRO_METRICS_DB": "/tmp/m.duckdb",
            "VIRNUCPRO_LOG_LEVEL": "debug",
            "VIRNUCPRO_NUM_WORKERS": "3",
            "VIRNUCPRO_TOKEN_BUDGET": "4096",
            "VIRNUCPRO_PROGRESS": "off",
        }
    )
    assert s.disable_compile and not s.progress
    assert (s.metrics_db, s.log_level, s.num_workers, s.token_budget) == (
        Path("/tmp/m.duckdb"),
        "DEBUG",
        3,
        4096,
    )


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"VIRNUCPRO_DISABLE_COMPILE": "maybe"}, "VIRNUCPRO_DISABLE_COMPILE='maybe'"),
        ({"VIRNUCPRO_NUM_WORKERS": "two"}, "VIRNUCPRO_NUM_WORKERS='two'"),
        ({"VIRNUCPRO_TOKEN_BUDGET": "3"}, "VIRNUCPRO_TOKEN_BUDGET=3"),
        ({"VIRNUCPRO_LOG_LEVEL": "loud"}, "LOUD"),
    ],
)
def test_settings_reject_bad_values_naming_them(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_encoder_config_validates_choices():
    with pytest.raises(ConfigError, match="precision='fp4'"):
        EncoderConfig("random:esm2_t6_8M_UR50D", precision="fp4")
    with pytest.raises(ConfigError, match="attention='magic'"):
        EncoderConfig("random:esm2_t6_8M_UR50D", attention="magic")


def test_parse_gpus():
    assert parse_gpus("2,3") == (2, 3)
    assert parse_gpus(None) == () == parse_gpus("cpu")
    with pytest.raises(ConfigError, match="'a,b'"):
        parse_gpus("a,b")
    with pytest.raises(ConfigError, match="twice"):
        PredictConfig(Path("x.fa"), Path("out"), gpus=(1, 1))


def test_atomic_write_publishes_whole_file_with_umask_mode(tmp_path):
    import os

    from pipeline.core.atomic import atomic_open, atomic_write_text

    target = tmp_path / "out.txt"
    atomic_write_text(target, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_fp8_precision_runs_dnabert_in_bf16():
    from pipeline.core.config import PRECISIONS, EncoderConfig, encoder_precision

    assert (
        "fp8" in PRECISIONS and EncoderConfig("random:esm2_t6_8M_UR50D", precision="fp8").precision == "fp8"
    )
    assert encoder_precision("esm2", "fp8") == "fp8"
    assert encoder_precision("dnabert-s", "fp8") == "bf16"
    assert [encoder_precision("dnabert-s", p) for p in ("fp16", "bf16", "fp32")] == ["fp16", "bf16", "fp32"]


def test_disable_compile_overrides_a_compile_request_in_one_place():
    on = Settings.from_env({})
    off = Settings.from_env({"VIRNUCPRO_DISABLE_COMPILE": "1"})
    assert on.compile_wanted(True) and not on.compile_wanted(False)
    assert not off.compile_wanted(True) and not off.compile_wanted(False)
