"""Shared test setup. GPU tests carry @pytest.mark.gpu and are skipped cleanly without CUDA.

``--results-json PATH`` writes one JSON summary of the run: every test's outcome, seconds, skip or
failure reason and the values it recorded with ``record_property`` (cosines, errors), plus the
machine it ran on. ``make gpu-test`` uses it for the committed GPU run (docs/testing.md).
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

RESULTS_SCHEMA = "virnucpro.test-results/1"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--results-json",
        metavar="PATH",
        default=None,
        help="write a JSON summary of the run (per test: outcome, seconds, reason, recorded values) to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--results-json")
    if path:
        config.pluginmanager.register(ResultsJson(Path(path), config), "virnucpro-results-json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (marker: gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The skip reason, or the last line of the failure."""
    longrepr = report.longrepr
    if longrepr is None:
        return None
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    return text[-2000:]


class ResultsJson:
    """Collects test reports; writes the summary after each test and at the end of the session."""

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self.path = path
        self.config = config
        self.tests: dict[str, dict[str, Any]] = {}
        self.collect_errors: list[dict[str, Any]] = []
        self.deselected = 0
        self.started = time.time()
        self.environment: dict[str, Any] | None = None

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append({"name": report.nodeid, "reason": _reason(report)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(
            report.nodeid,
            {"name": report.nodeid, "outcome": None, "seconds": 0.0, "gpu": "gpu" in report.keywords},
        )
        entry["seconds"] = round(entry["seconds"] + report.duration, 3)
        if report.user_properties:
            entry["values"] = {name: value for name, value in report.user_properties}
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome
            if report.when != "call" and report.failed:
                outcome = "error"  # a fixture or teardown failed, not the test itself
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            if entry["outcome"] in (None, "passed"):
                entry["outcome"] = outcome
                entry["reason"] = _reason(report)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        # rewritten after every test, so a run killed by a time limit still leaves its results
        self.write(exit_status=None)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(exit_status=int(exitstatus))
        print(f"\nresults written to {self.path}", file=sys.stderr)

    def write(self, exit_status: int | None) -> None:
        from pipeline.core.atomic import atomic_write_text

        if self.environment is None:
            from pipeline.core.runinfo import environment_info

            self.environment = {**environment_info(), "attention": _attention_capabilities()}
        tests = sorted(self.tests.values(), key=lambda t: t["name"])
        totals: dict[str, int] = {}
        for t in tests:
            totals[t["outcome"]] = totals.get(t["outcome"], 0) + 1
        # `virnucpro ingest` reads this as a device-benchmark file (an "environment" block): the totals
        # and each test's seconds and recorded values become metrics named by the test id.
        markexpr = self.config.getoption("markexpr")
        doc = {
            "schema": RESULTS_SCHEMA,
            "benchmark": f"pytest -m {markexpr}" if markexpr else "pytest",
            "started_at": _iso(self.started),
            "finished_at": _iso(time.time()),
            "pytest_args": list(self.config.invocation_params.args),
            "complete": exit_status is not None,
            "exit_status": exit_status,
            "seconds": round(time.time() - self.started, 1),
            "environment": self.environment,
            "totals": {**totals, "deselected": self.deselected},
            "collect_errors": self.collect_errors,
            "tests": tests,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(doc, indent=1, default=str) + "\n")


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _attention_capabilities() -> dict[str, bool]:
    from pipeline.models import attention

    return {
        "flash_attn": attention.HAS_FLASH_ATTN,
        "torch_varlen": attention.HAS_TORCH_VARLEN,
        "flex": attention.HAS_FLEX,
    }
