"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real ``stepline serve`` process that runs the instances.

An operator signs in, runs the example batch with a changed param from the form, watches
the DAG turn green without a reload, retries a failed instance from the page, cancels a
slow one; a form posted without the CSRF token is refused. Screenshots of the batches page
and of a failed instance's page are written to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepline import batch, step
from stepline.service import Stepline

ROOT = Path(__file__).parents[2]
TESTS = ROOT / "tests"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
STEPLINE = Path(sys.executable).parent / "stepline"
TOKEN = "tok-browser-91c4d2e8f0"
W = "fixture_runners:"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 30_000


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests are required in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``stepline serve`` on a fresh SQLite database with the example batch and two more."""
    root = tmp_path_factory.mktemp("browser")
    db = f"sqlite:///{root / 'ui.db'}"
    with Stepline(db=db) as service:
        service.apply_path(ROOT / "examples" / "diamond" / "farm_readings.yaml")
        retry_once = {"attempts": 1, "backoff": "0s", "jitter": False}
        service.apply(
            batch(
                "flaky_report",
                [
                    step("prepare", W + "work", ["publish", "announce"]),
                    step("publish", W + "work", retry=retry_once, **{"with": {"fail_times": 1}}),
                    step("announce", W + "work", condition="params.announce == true"),
                ],
                params={"announce": False},
                cron="0 0 2 * * 1",
                timezone="Asia/Seoul",
            )
        )
        chain = [
            step(
                f"slow_{n}",
                W + "work",
                [f"slow_{n + 1}"] if n < 29 else [],
                **{"with": {"sleep": 1}},
            )
            for n in range(30)
        ]
        service.apply(batch("slow_export", chain))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env.update(
        STEPLINE_DB=db,
        STEPLINE_API_TOKEN=TOKEN,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
    )
    port = _free_port()
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(STEPLINE), "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, (root / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("stepline serve did not start:\n" + (root / "serve.log").read_text())
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A signed-in page: the login form, with the token, as an operator would."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=server)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto("/ui")
    assert "/ui/login" in page.url  # not signed in yet: sent to the form
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/ui")
    yield page
    context.close()


def _run_from_form(page: Any, name: str, values: dict[str, str] | None = None) -> int:
    page.goto(f"/ui/batches/{name}")
    for field, value in (values or {}).items():
        page.fill(f"input[name='param.{field}']", value)
    page.click("button:has-text('Run now')")
    page.wait_for_url("**/ui/instances/*")
    return int(page.url.rsplit("/", 1)[1])


def _mark(page: Any) -> None:
    """A value in the window that any reload or navigation would wipe."""
    page.evaluate("window.__stepline_marker = 'kept'")


def _not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__stepline_marker === 'kept'"))


def _wait_status(page: Any, status: str) -> None:
    page.wait_for_selector(f"#live[data-status={status}]", timeout=WAIT_MS)


def test_run_the_example_with_a_changed_param_and_watch_the_dag_turn_green(
    page: Any, server: str
) -> None:
    assert page.locator("text=farm_readings").count() >= 1
    instance_id = _run_from_form(page, "farm_readings", {"humidity_threshold": "70"})
    _mark(page)
    _wait_status(page, "succeeded")
    assert _not_reloaded(page)  # htmx replaced the live part in place
    nodes = page.locator("svg.dag g.node")
    assert nodes.count() == 4
    assert page.locator("svg.dag g.node[data-status=succeeded]").count() == 4
    fill = page.eval_on_selector(
        "svg.dag g.node[data-step=report] rect", "r => getComputedStyle(r).fill"
    )
    assert fill == "rgb(218, 251, 225)"  # the green of a succeeded step
    detail = httpx.get(
        f"{server}/api/instances/{instance_id}", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert detail["params"]["humidity_threshold"] == 70
    assert detail["trigger"] == "ui"
    # Polling stopped: the live part no longer asks the server.
    assert page.locator("#live[hx-get]").count() == 0
    audit = page.locator("table.audit").inner_text()
    assert "api token (session)" in audit and "run" in audit and "humidity_threshold" in audit


def test_a_failed_step_retried_from_the_page_succeeds(page: Any) -> None:
    instance_id = _run_from_form(page, "flaky_report")
    _wait_status(page, "failed")
    assert page.locator("svg.dag g.node[data-step=publish][data-status=failed]").count() == 1
    skipped = page.locator("#step-announce").inner_text()
    assert "Skipped: condition 'params.announce == true' was false" in skipped
    assert "planned failure 1 of publish" in page.locator("#step-publish").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "failed-instance.png"), full_page=True)
    page.click("#retry")
    page.wait_for_url(f"**/ui/instances/{instance_id}")
    _mark(page)
    _wait_status(page, "succeeded")
    assert _not_reloaded(page)
    assert page.locator("svg.dag g.node[data-status=succeeded]").count() == 2
    assert page.locator("svg.dag g.node[data-status=skipped]").count() == 1
    assert "retry" in page.locator("table.audit").inner_text()


def test_a_slow_instance_is_cancelled_from_the_page(page: Any) -> None:
    _run_from_form(page, "slow_export")
    _wait_status(page, "running")
    page.wait_for_selector("svg.dag g.node[data-status=running]")
    page.click("#cancel")
    _wait_status(page, "cancelled")
    assert page.locator("svg.dag g.node[data-status=succeeded]").count() < 30
    assert "cancel" in page.locator("table.audit").inner_text()


def test_a_form_without_the_csrf_token_is_refused(page: Any, server: str) -> None:
    """The browser's own session cookie is sent, but no CSRF token: refused, nothing runs."""
    before = httpx.get(
        f"{server}/api/instances", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    for form in ({}, {"csrf": "forged-value"}):
        response = page.request.post("/ui/batches/flaky_report/run", form=form)
        assert response.status == 403
        assert "CSRF" in response.text()
    after = httpx.get(
        f"{server}/api/instances", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert len(after["instances"]) == len(before["instances"])


def test_the_batches_page_shows_schedules_and_last_runs(page: Any) -> None:
    page.goto("/ui")
    row = page.locator("tr", has=page.locator("a:has-text('flaky_report')"))
    text = row.inner_text()
    assert "0 0 2 * * 1" in text and "Asia/Seoul" in text and " 02:00:00 KST" in text
    marks = row.locator(".strip a.run")
    assert marks.count() >= 1
    assert "succeeded" in (marks.last.get_attribute("title") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batches.png"), full_page=True)


def test_signing_out_ends_the_session(page: Any, server: str) -> None:
    page.click("button:has-text('Sign out')")
    page.wait_for_url("**/ui/login")
    page.goto("/ui/instances")
    assert "/ui/login" in page.url


@pytest.fixture(autouse=True, scope="module")
def _tools_present() -> None:
    if shutil.which("stepline", path=str(STEPLINE.parent)) is None:
        pytest.fail(f"{STEPLINE} is missing: pip install -e .")
