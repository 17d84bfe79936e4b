"""The web dashboard in a real headless chromium against a real coordinator and workers.

What a person sees is asserted: a node's state attribute changing while the page stays
loaded, a failed task's error in the task panel, the workers listed, and a 10,000-task
run's page drawn in under 2 s and still updating. Waits are Playwright's selector waits
(event driven, with deadlines) and ``eventually``; screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

from xpipe import Pipeline, PipelineManager, Task

from tests import helpers_dashboard as hd
from tests import helpers_tasks as ht
from tests.browser.conftest import ARTIFACTS
from tests.harness import Cluster, SecureSetup, free_port

_IMPORTS = ("tests.helpers_tasks", "tests.helpers_dashboard")
_HTTP = ("--http-listen", "127.0.0.1:0")
#: The brief's bound for a 10,000-task run page, navigation to DAG drawn.
_BIG_RUN_LOAD_S = 2.0
_BIG_RUN_TASKS = 10_000


def _dashboard(pm: PipelineManager) -> str:
    url = pm.get_cluster_status().dashboard_url
    assert url.startswith("http://127.0.0.1:"), f"dashboard_url {url!r} is not a loopback http URL"
    return url.rstrip("/")


def _node(task: str, state: str) -> str:
    return f'#dag [data-task="{task}"][data-state="{state}"]'


def test_run_page_shows_nodes_change_state_without_reload(tmp_path: Path, browser) -> None:
    gate_a, gate_b = tmp_path / "release-a", tmp_path / "release-b"
    with Cluster(tmp_path, workers=2, imports=_IMPORTS, coordinator_args=_HTTP) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("live-dag")
        p.add_tasks([
            Task("extract", hd.wait_for_file, kwargs={"path": str(gate_a)}),
            Task("side", ht.noop),
            Task("audit", ht.describe, depends_on=["side"]),
            Task("transform", hd.say_wait_say, depends_on=["extract"], kwargs={"path": str(gate_b)}),
            Task("validate", ht.describe, depends_on=["extract"]),
            Task("load", ht.describe, depends_on=["transform", "validate"]),
            Task("publish", ht.describe, depends_on=["load", "audit"]),
        ])  # fmt: skip
        run_id = pm.submit(p)
        page = browser.new_page(viewport={"width": 1100, "height": 330})
        page.goto(f"{_dashboard(pm)}/#/runs/{run_id}")
        page.wait_for_selector(_node("extract", "running"), timeout=20_000)
        page.wait_for_selector(_node("side", "succeeded"), timeout=20_000)
        assert page.get_attribute('#dag [data-task="load"]', "data-state") == "pending"
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        gate_a.touch()
        page.wait_for_selector(_node("extract", "succeeded"), timeout=20_000)
        page.wait_for_selector(_node("transform", "running"), timeout=20_000)
        page.wait_for_selector('#dag .node.crit[data-task="transform"]', timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "run-page-running.png"))
        # The task panel follows the running task's log: the first line now, the next on release.
        page.click(_node("transform", "running"))
        page.wait_for_selector("#task-logs:has-text('waiting for release-b')", timeout=10_000)
        assert "released" not in page.text_content("#task-logs")
        gate_b.touch()
        page.wait_for_selector("#task-logs:has-text('released by release-b')", timeout=10_000)
        page.wait_for_selector("#task-logs:has-text('[end of output]')", timeout=10_000)
        page.wait_for_selector(_node("publish", "succeeded"), timeout=20_000)
        page.wait_for_selector('.summary .state[data-state="succeeded"]', timeout=20_000)
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        counts = page.eval_on_selector_all("[data-count]", "els => Object.fromEntries(els.map(e => [e.dataset.count, +e.textContent]))")
        assert counts["succeeded"] == 7 and sum(counts.values()) == 7, f"counts per state: {counts}"
        # The critical path is the chain that took the time, not the quick side task.
        crit = page.eval_on_selector_all("#dag .node.crit", "els => els.map(e => e.dataset.task)")
        assert set(crit) == {"extract", "transform", "load", "publish"}
        page.screenshot(path=str(ARTIFACTS / "run-page.png"), full_page=True)
        page.close()


def test_run_page_reconnects_after_a_coordinator_restart_and_catches_up(tmp_path: Path, browser) -> None:
    gate = tmp_path / "release"
    port = free_port()  # the same dashboard address after the restart
    with Cluster(tmp_path, workers=1, imports=_IMPORTS, coordinator_args=("--http-listen", f"127.0.0.1:{port}")) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("survives-restart")
        p.add_tasks([
            Task("first", hd.wait_for_file, kwargs={"path": str(gate)}),
            Task("second", ht.describe, depends_on=["first"]),
        ])  # fmt: skip
        run_id = pm.submit(p)
        page = browser.new_page()
        page.goto(f"{_dashboard(pm)}/#/runs/{run_id}")
        page.wait_for_selector(_node("first", "running"), timeout=20_000)
        page.wait_for_selector('#dag[data-stream="live"]', timeout=10_000)
        page.evaluate("window.__sameDocument = true")

        c.coordinator.terminate()
        page.wait_for_selector('#dag[data-stream="interrupted"]', timeout=10_000)
        c.restart_coordinator()
        page.wait_for_selector('#dag[data-stream="live"]', timeout=20_000)
        assert page.get_attribute('#dag [data-task="first"]', "data-state") == "running"
        gate.touch()  # the changes now come over the new stream
        page.wait_for_selector(_node("second", "succeeded"), timeout=30_000)
        page.wait_for_selector('#dag[data-stream="ended"]', timeout=10_000)
        assert page.get_attribute('#dag [data-task="first"]', "data-state") == "succeeded"
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        page.close()


def test_failed_task_shows_its_error_in_the_task_panel(tmp_path: Path, browser) -> None:
    with Cluster(tmp_path, workers=1, imports=_IMPORTS, coordinator_args=_HTTP) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("failing")
        p.add_tasks([
            Task("ok", ht.noop),
            Task("boom", ht.fail_with_value_error, args=("disk quota exceeded on /data/42",), max_retries=0),
        ])  # fmt: skip
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60, raise_on_failure=False)
        assert not result.succeeded
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.goto(f"{_dashboard(pm)}/#/runs/{result.run_id}")
        page.click(_node("boom", "failed"), timeout=20_000)
        error = page.wait_for_selector("#task-error", timeout=10_000)
        assert "disk quota exceeded on /data/42" in error.text_content()
        assert "ValueError" in error.text_content()
        assert "Traceback" in page.text_content("#task-traceback")
        assert page.text_content("#task-worker") not in ("", "-")
        assert "null" not in page.text_content("#task-body"), "an absent section printed as null"
        page.screenshot(path=str(ARTIFACTS / "task-panel-failed.png"), full_page=True)

        # An unknown run is named in the page's error, not a blank page.
        page.goto(f"{_dashboard(pm)}/#/runs/no-such-run")
        assert "no run 'no-such-run'" in page.wait_for_selector("#page-error", timeout=10_000).text_content()

        # The runs page, filtered by state, lists the failed run and not the others.
        fine = Pipeline("fine")
        fine.add_task(Task("ok", ht.noop))
        ok = pm.execute_pipeline(fine, monitor=False, timeout_s=60)
        page.goto(f"{_dashboard(pm)}/#/runs")
        page.wait_for_selector(f'#runs tr[data-run="{ok.run_id}"]', timeout=10_000)
        page.select_option("#filter-state", "failed")
        page.wait_for_selector(f'#runs tr[data-run="{ok.run_id}"]', state="detached", timeout=10_000)
        assert page.get_attribute(f'#runs tr[data-run="{result.run_id}"]', "data-state") == "failed"
        page.close()


def test_workers_page_lists_the_workers(tmp_path: Path, browser) -> None:
    with Cluster(tmp_path, workers=2, slots=3, imports=_IMPORTS, coordinator_args=_HTTP) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 600})
        page.goto(f"{_dashboard(pm)}/#/workers")
        page.wait_for_function("document.querySelectorAll('#workers tr[data-worker]').length === 2", timeout=20_000)
        text = page.text_content("#workers")
        for name in c.workers:
            assert name in text, f"worker {name} not on the page: {text!r}"
        assert text.count("/3") == 2, f"each worker's 3 slots should show: {text!r}"
        # The sparklines draw the heartbeats' samples; they grow while the page polls. Attached,
        # not visible: on a saturated machine every sample is 100%, a flat line of zero height,
        # which Playwright counts as not visible.
        page.wait_for_selector("#workers svg.spark.cpu polyline", state="attached", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "workers-page.png"), full_page=True)
        page.close()


def test_ten_thousand_task_run_page_loads_fast_and_keeps_updating(tmp_path: Path, browser) -> None:
    gate, never = tmp_path / "release-gate", tmp_path / "never"
    with Cluster(tmp_path, workers=2, imports=_IMPORTS, coordinator_args=_HTTP) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        # A gate, then 1,000 chains of 10: eleven layers. The chains wait on a file that is
        # never created, so only the slots' worth run and the browser shares the CPU with little.
        width = 1_000
        tasks = [Task("gate", hd.wait_for_file, kwargs={"path": str(gate)})]
        for i in range(_BIG_RUN_TASKS - 1):
            up = "gate" if i < width else f"t{i - width}"
            tasks.append(Task(f"t{i}", hd.wait_for_file, depends_on=[up], kwargs={"path": str(never)}))
        p = Pipeline("ten-thousand")
        p.add_tasks(tasks)
        run_id = pm.submit(p)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        try:
            start = time.monotonic()
            page.goto(f"{_dashboard(pm)}/#/runs/{run_id}")
            page.wait_for_selector("#dag[data-ready]", timeout=30_000)
            load_s = time.monotonic() - start
            # Above 500 tasks the cells are painted on a canvas; its view says what it shows.
            cells = page.evaluate("document.querySelector('#dag').xpipeDag.cells")
            print(f"10,000-task run page: DAG drawn {load_s:.2f}s after navigation "
                  f"(in page: {page.get_attribute('#dag', 'data-load-ms')} ms, of which fetching the run "
                  f"{page.get_attribute('#dag', 'data-fetch-ms')} ms), {cells} cells")
            assert cells == _BIG_RUN_TASKS
            assert page.get_attribute("#dag canvas", "class") == "lod", "above 500 tasks the page paints cells"
            assert page.eval_on_selector_all("#dag [data-task]", "els => els.length") == 0, "no element per task"
            assert page.evaluate("document.querySelector('#dag').xpipeDag.drawnCount('pending')") >= _BIG_RUN_TASKS - 3
            assert load_s < _BIG_RUN_LOAD_S, f"the page took {load_s:.2f}s (limit {_BIG_RUN_LOAD_S}s)"

            cell = "document.querySelector('#dag').xpipeDag.stateOf('{}') === '{}'"
            page.wait_for_function(cell.format("gate", "running"), timeout=20_000)
            page.evaluate("window.__canvas = document.querySelector('#dag canvas')")
            gate.touch()
            page.wait_for_function(cell.format("gate", "succeeded"), timeout=20_000)
            page.wait_for_function(cell.format("t0", "running"), timeout=20_000)
            # Painted, not only recorded: the count of cells drawn running follows.
            page.wait_for_function("document.querySelector('#dag').xpipeDag.drawnCount('running') >= 1", timeout=20_000)
            assert page.evaluate("document.querySelector('#dag canvas') === window.__canvas"), "the canvas was redrawn"
            page.screenshot(path=str(ARTIFACTS / "run-page-10k.png"))
            # A click on a cell opens that task's panel (the cells are hit-tested, not elements).
            box = page.evaluate("""() => { const r = document.querySelector('#dag canvas').getBoundingClientRect();
                                          return {x: r.left, y: r.top}; }""")
            page.mouse.click(box["x"] + 10 + 3, box["y"] + 20 + 3)  # layer 0, first cell: the gate
            page.wait_for_selector('#task-name[data-task="gate"]', timeout=10_000)
        finally:
            page.close()
            pm.cancel(run_id)


def test_with_auth_on_the_page_asks_for_a_token_and_refuses_a_bad_one(tmp_path: Path, browser) -> None:
    setup = SecureSetup(tmp_path, mtls=False)
    port = free_port()
    with Cluster(tmp_path, workers=0, security=setup, coordinator_args=("--http-listen", f"127.0.0.1:{port}")):
        # The coordinator's certificate comes from the test's own CA, unknown to chromium.
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.goto(f"https://127.0.0.1:{port}/#/runs")
        page.wait_for_selector("#login[open]", timeout=10_000)
        page.fill("#token", "xpt_not_a_token")
        page.click("#login button")
        page.wait_for_selector("#login-error:has-text('refused')", timeout=10_000)
        page.fill("#token", setup.tokens["viewer"])
        page.click("#login button")
        page.wait_for_selector("#runs td:has-text('No runs.')", timeout=10_000)
        assert not page.is_visible("#login"), "the login dialog stayed open after a good token"
        context.close()
