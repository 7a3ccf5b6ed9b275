"""The Airflow UI and the HTML report as a user meets them, in a real browser (Debian's Chromium driven
by Playwright): log in, open each DAG's trigger form, submit its defaults, wait for the run to succeed,
open the report from the run; and render the report with no console error, no request leaving the
file, and every table within the window.

Skipped, with the reason, where Chromium or Playwright is missing (``make test`` installs both in CI:
``apt-get install chromium`` as root and the ``dev`` extra). Playwright launches the Debian binary;
it never downloads a browser of its own.

``UPDATE_REPORT_SCREENSHOT=1`` also writes the report's screenshot to ``docs/report-screenshot.png``
(``make report-screenshot``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.airflow import REPO, AirflowServer, free_port

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOT = REPO / "docs" / "report-screenshot.png"

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="playwright not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium, as root)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[AirflowServer]:
    """``scripts/airflow_serve.sh`` (what ``make airflow`` runs) on a free loopback port; the metrics
    store goes to a temporary file, run outputs to the DAGs' default places (removed afterwards)."""
    root = tmp_path_factory.mktemp("ui")
    server = AirflowServer(
        root / "home", free_port(), env={"VIRNUCPRO_METRICS_DB": str(root / "metrics.duckdb")}
    )
    try:
        server.start(timeout=420)  # generous: four Airflow processes start on a 2-core machine
        server.login()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


def _login(page: Page, airflow: AirflowServer) -> None:
    passwords = json.loads((airflow.home / "simple_auth_manager_passwords.json.generated").read_text())
    user, password = next(iter(passwords.items()))
    page.goto(airflow.url + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(airflow.url + "/", timeout=30_000)


def _run_ids(airflow: AirflowServer, dag_id: str) -> set[str]:
    return {r["dag_run_id"] for r in airflow.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]}


def _trigger_with_defaults(page: Page, airflow: AirflowServer, dag_id: str) -> str:
    """Open the DAG's page, open the trigger form, submit it untouched; returns the new run's id."""
    before = _run_ids(airflow, dag_id)
    page.goto(f"{airflow.url}/dags/{dag_id}")
    page.get_by_test_id("trigger-dag-button").click()
    submit = page.get_by_test_id("trigger-dag-submit")
    submit.wait_for(state="visible")
    # The form validates every field against the DAG's params; a default it refuses disables Trigger.
    deadline = time.monotonic() + 20
    while not submit.is_enabled():
        assert time.monotonic() < deadline, f"{dag_id}: the trigger form refuses its own defaults"
        time.sleep(0.5)
    submit.click()
    deadline = time.monotonic() + 30
    while not (new := _run_ids(airflow, dag_id) - before):
        assert time.monotonic() < deadline, f"{dag_id}: submitting the form created no run"
        time.sleep(1)
    assert len(new) == 1, f"{dag_id}: expected the one triggered run, got {sorted(new)}"  # no scheduled extra
    return new.pop()


def _run_state(airflow: AirflowServer, dag_id: str, run_id: str, timeout: float) -> str:
    """Poll the run's state until it finishes; a slow answer on a busy machine is asked again."""
    quoted = urllib.parse.quote(run_id, safe="")
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        try:
            state = airflow.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"]
        except (TimeoutError, OSError):
            continue
        if state in ("success", "failed"):
            break
        time.sleep(3)
    return state


def _wait_in_ui(page: Page, airflow: AirflowServer, dag_id: str, run_id: str, timeout: float) -> None:
    state = _run_state(airflow, dag_id, run_id, timeout)
    tis = airflow.task_instances(dag_id, run_id)
    assert state == "success", (
        f"{dag_id} run {run_id}: {state}; tasks "
        + ", ".join(f"{t['task_id']}={t['state']}" for t in tis)
        + "\n"
        + airflow.log_tail()
    )
    page.goto(f"{airflow.url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}")
    page.get_by_text("success").first.wait_for(timeout=30_000)


def _safe(run_id: str) -> str:  # pipeline.run.steps.resolve_output_dir's directory name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")


def _check_report(page: Page, html: Path) -> None:
    """Open a report file: no console error, no request beyond the file itself, no table wider than
    the window, every figure decoded."""
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri())
    page.wait_for_load_state("load")
    assert errors == [], errors
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    too_wide = page.evaluate(
        """() => [...document.querySelectorAll('table')]
             .filter(t => t.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
             .map(t => t.outerHTML.slice(0, 120))"""
    )
    assert too_wide == [], too_wide
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0


def test_predict_dag_from_the_trigger_form_with_its_defaults(page, airflow):
    _login(page, airflow)
    run_id = _trigger_with_defaults(page, airflow, "virnucpro_predict")
    run_dir = REPO / "out" / "runs" / _safe(run_id)
    try:
        _wait_in_ui(page, airflow, "virnucpro_predict", run_id, timeout=600)
        lines = (run_dir / "prediction_results.txt").read_text().splitlines()
        assert lines[0].split("\t")[:2] == ["Sequence_ID", "Prediction"] and len(lines) > 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_nightly_dag_from_the_trigger_form_with_its_defaults_and_its_report(page, airflow):
    _login(page, airflow)
    run_id = _trigger_with_defaults(page, airflow, "virnucpro_nightly")
    run_dir = REPO / "out" / "nightly" / _safe(run_id)
    try:
        _wait_in_ui(page, airflow, "virnucpro_nightly", run_id, timeout=900)
        # the form's "Unpause on trigger" started no scheduled run beside the one asked for
        assert _run_ids(airflow, "virnucpro_nightly") == {run_id}
        quoted = urllib.parse.quote(run_id, safe="")
        # The run's report: the report task's return value, shown on its XCom tab.
        page.goto(f"{airflow.url}/dags/virnucpro_nightly/runs/{quoted}/tasks/report/xcom")
        shown = page.get_by_text(re.compile(r"report\.html")).first
        shown.wait_for(timeout=30_000)
        report = Path(re.search(r"(/\S+?report\.html)", shown.inner_text()).group(1))
        assert report == run_dir / "report.html" and report.is_file()
        _check_report(page, report)
        assert page.get_by_text("Latest pipeline run").is_visible()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_sample_report_in_the_browser(page, tmp_path):
    from validation import samples
    from validation.metrics_store import MetricsStore
    from validation.report import render_report

    store = MetricsStore(tmp_path / "m.duckdb")
    store.ingest_files(samples.write_samples(tmp_path / "in"))
    (tmp_path / "e2e.json").write_text(json.dumps(samples.e2e_doc(20)))
    store.ingest_file(tmp_path / "e2e.json")
    html = render_report(
        tmp_path / "m.duckdb", tmp_path / "report.html", baseline="20261118T020000Z-sample18"
    )
    _check_report(page, html)
    for heading in ("Throughput over time", "End-to-end runs", "Regressions", "Benchmarks"):
        assert page.get_by_role("heading", name=heading).is_visible()
    shot = tmp_path / "report.png"
    page.screenshot(
        path=str(shot), clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": 2200}, full_page=True
    )
    assert shot.stat().st_size > 50_000  # text, badges and plots, not a blank page
    if os.environ.get("UPDATE_REPORT_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
