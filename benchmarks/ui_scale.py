"""The Dagster UI and the run queue with 1000 batches: GraphQL, the pages in Chromium, a 1000-run backfill.

Issue 13 ("The Dagster UI stays usable with 1000 batches"). Everything runs on 127.0.0.1 and is stopped
at the end, also on failure or Ctrl-C:

1. A manifest of 1000 batches of one row each, the emulator with Kie's limits (20 createTask per 10 s)
   and short tasks, a throwaway PostgreSQL server (:func:`kie_pipeline_tests.postgres.running_postgres`),
   a Dagster instance on it (deploy/dagster-postgres.yaml: the QueuedRunCoordinator, the ``kie`` pool
   at run granularity; its limit set to ``--pool-limit``, 2 as in deploy/dagster.yaml),
   ``dagster-webserver`` and ``dagster-daemon run`` as subprocesses.
   ``prompt_manifest`` is materialized through the queue (it registers the 1000 partitions).
2. The asset's Partitions page and its "Materialize..." dialog are loaded in headless Chromium
   (Playwright over Debian's Chromium, as tools/ui_check.py does), recording every GraphQL operation
   the pages issue, the time to render, and that all 1000 partitions are listed and selected. The
   dialog's "Launch backfill" request is intercepted (recorded, not sent). Screenshots go to
   docs/screenshots/.
3. The recorded operations are replayed with httpx and timed (each several times): the partition grid's
   health, the dialog's loaders, ...
4. The 1000-partition backfill is launched with the dialog's own ``launchPartitionBackfill`` request;
   the run records are sampled every 2 s for ``--minutes`` while the daemon works (runs created per
   minute, runs in progress against the pool limit, runs completed per minute), and read once more at
   the end (the most runs that overlapped, where a run's time went, other runs the automation
   started). The backfill is then cancelled (``cancelPartitionBackfill``) and the numbers are printed
   as a table, with the time 1000 runs would take at the measured rate.

Run: ``.venv/bin/python benchmarks/ui_scale.py --minutes 8`` (about 20 minutes in all on 2 cores).
Exit status 0 when every check passed (partitions shown and selected, the pool limit held).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
# tools/ui_check.py's helpers (servers, GraphQL, Chromium) are imported, not copied.
sys.path.insert(0, str(ROOT))

from kie_pipeline_tests.postgres import running_postgres  # noqa: E402
from tools.ui_check import (  # noqa: E402
    CHROMIUM,
    IMAGES_ASSET,
    MANIFEST_ASSET,
    SCREENSHOTS,
    CheckFailed,
    Report,
    Servers,
    asset_url,
    ensure_chromium,
    ensure_playwright,
    free_port,
    graphql,
    launch,
    location_loaded,
    port_open,
    run_errors,
    wait_for,
    wait_runs,
)

#: The pool limit of deploy/dagster.yaml: at most 2 batches talk to Kie at once.
POOL_LIMIT = 2
PARTITIONS_DEF = "batches"
START_TIMEOUT_S = 300


def say(text: str) -> None:
    """One progress line, flushed."""
    print(f"ui-scale: {text}", flush=True)


# --- 1. The deployment ------------------------------------------------------------------------------


def write_manifest(path: Path, batches: int) -> list[str]:
    """A CSV manifest of ``batches`` batches of one row each; returns the batch names in order."""
    names = [f"b{i:04d}" for i in range(batches)]
    lines = ["id,batch,prompt"] + [f"r{i:04d},{b},ui scale image {i}" for i, b in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")
    return names


#: The PostgreSQL deployment's instance file (its pool, queue and launcher), when it is there.
POSTGRES_YAML = ROOT / "deploy" / "dagster-postgres.yaml"


def instance_yaml(pool_limit: int) -> tuple[dict[str, Any], str]:
    """The instance's config, with the ``kie`` pool's limit set to ``pool_limit``; and where it came from.

    deploy/dagster-postgres.yaml as shipped when it exists; else deploy/dagster.yaml (pool, launcher,
    run monitoring) with PostgreSQL storage and the run queue added here.
    """
    if POSTGRES_YAML.exists():
        config = yaml.safe_load(POSTGRES_YAML.read_text())
        source = str(POSTGRES_YAML.relative_to(ROOT))
    else:
        config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
        source = "deploy/dagster.yaml + postgres storage + QueuedRunCoordinator"
        db = {var: {"env": f"DAGSTER_PG_{var.upper()}"} for var in ("host", "port", "user", "password", "db")}
        config["storage"] = {
            "postgres": {
                "postgres_db": {
                    "hostname": db["host"],
                    "port": db["port"],
                    "username": db["user"],
                    "password": db["password"],
                    "db_name": db["db"],
                    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
                    "scheme": "postgresql+psycopg2",
                }
            }
        }
        config["run_coordinator"] = {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    config.setdefault("concurrency", {}).setdefault("pools", {})["default_limit"] = pool_limit
    return config, f"{source}, pools.default_limit={pool_limit}"


@dataclass
class Deployment:
    """The running servers, the webserver's URL, and the instance (read directly for the samples)."""

    url: str
    servers: Servers
    home: Path
    batches: list[str]
    env: dict[str, str]

    def instance(self) -> Any:
        """A DagsterInstance on the same PostgreSQL database (the benchmark's own reads)."""
        import dagster as dg

        os.environ.update({k: v for k, v in self.env.items() if k.startswith("DAGSTER_PG_")})
        return dg.DagsterInstance.from_config(str(self.home))


@contextlib.contextmanager
def deployment(workdir: Path, args: argparse.Namespace, setup: dict[str, float]) -> Iterator[Deployment]:
    """PostgreSQL, the emulator, dagster-webserver and dagster-daemon, with 1000 batches registered."""
    with running_postgres() as pg:
        home = workdir / "dagster_home"
        home.mkdir()
        config, source = instance_yaml(args.pool_limit)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        say(f"instance: {source}")
        batches = write_manifest(workdir / "prompts.csv", args.batches)
        emulator_port, web_port = free_port(), free_port()
        env = {
            **os.environ,
            **pg.env(),
            "DAGSTER_HOME": str(home),
            "KIE_STORE": str(workdir / "store"),
            "KIE_MANIFEST": str(workdir / "prompts.csv"),
            "KIE_BASE_URL": f"http://127.0.0.1:{emulator_port}",
            "KIE_UPLOAD_URL": f"http://127.0.0.1:{emulator_port}",
            "KIE_API_KEY": "emulator-key",
            "PYTHONUNBUFFERED": "1",
        }
        # Nothing of the caller's own Kie setup (a real store, shared limits, callbacks) leaks in.
        for var in (
            "KIE_STORE_OPTIONS",
            "KIE_CREATE_LIMIT",
            "KIE_POLL_LIMIT",
            "KIE_CALLBACK_URL",
            "KIE_COORDINATION_URL",
        ):
            env.pop(var, None)
        servers = Servers(workdir)
        try:
            py, bin_dir = sys.executable, Path(sys.executable).parent
            # Kie's documented createTask limit; short tasks, tiny images: the runs, not Kie, are measured.
            emulator = [py, "-m", "kie_pipeline.emulator", "--port", str(emulator_port)]
            limits = ["--create-limit", "20", "--create-period", "10", "--latency", args.latency]
            servers.start("emulator", [*emulator, *limits, "--render-scale", "0.02"], env)
            web = [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1"]
            servers.start("webserver", [*web, "-p", str(web_port)], env)
            servers.start("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], env)
            wait_for("the emulator", lambda: port_open(emulator_port), servers, 60)
            url = f"http://127.0.0.1:{web_port}"
            say(f"dagster-webserver starting at {url} (DAGSTER_HOME={home}, PostgreSQL on port {pg.port})")
            began = time.monotonic()
            wait_for("dagster-webserver", lambda: location_loaded(url), servers, START_TIMEOUT_S)
            setup["webserver up, code location loaded"] = time.monotonic() - began
            dep = Deployment(url, servers, home, batches, env)
            started = time.monotonic()
            # Through the queue: the daemon launches it (and proves it is up).
            wait_runs(url, {MANIFEST_ASSET: launch(url, MANIFEST_ASSET)}, servers.check_alive)
            registered = len(dep.instance().get_dynamic_partitions(PARTITIONS_DEF))
            setup[f"{MANIFEST_ASSET} via the queue ({registered} partitions)"] = time.monotonic() - started
            say(
                f"{MANIFEST_ASSET} materialized in {time.monotonic() - started:.1f} s: {registered} partitions"
            )
            if registered != len(batches):
                raise CheckFailed(
                    f"{registered} partitions registered, the manifest has {len(batches)} batches"
                )
            yield dep
        except BaseException:
            for name, _ in servers.procs:
                say(f"--- last lines of {name}'s log ---\n{servers.tail(name)}")
            raise
        finally:
            say("stopping the servers")
            servers.stop()


# --- 2. The pages in Chromium -----------------------------------------------------------------------


@dataclass
class Operation:
    """One GraphQL operation the browser issued: its request body and how long each call took."""

    name: str
    body: dict[str, Any]
    browser_ms: list[float] = field(default_factory=list)


@dataclass
class Browser:
    """A Chromium page on the UI that records every GraphQL operation it issues."""

    page: Any
    url: str
    report: Report
    operations: dict[str, Operation] = field(default_factory=dict)
    launch_body: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def attach(self) -> None:
        """Record each /graphql request (body, time from request to response end); hold back the
        dialog's LaunchPartitionBackfill (recorded, aborted: the benchmark sends it itself, timed)."""

        def finished(request: Any) -> None:
            if "/graphql" not in request.url:
                return
            body = request.post_data_json or {}
            name = str(body.get("operationName") or request.url.rsplit("op=", 1)[-1])
            op = self.operations.setdefault(name, Operation(name, body))
            timing = request.timing
            op.browser_ms.append(timing["responseEnd"] - timing["requestStart"])

        def route(route: Any) -> None:
            body = route.request.post_data_json or {}
            if body.get("operationName") == "LaunchPartitionBackfill":
                self.launch_body = body
                route.abort()
                return
            route.continue_()

        self.page.on("requestfinished", finished)
        self.page.route("**/graphql*", route)

    def skip_nux(self) -> None:
        """Dismiss the first-visit "Join the Dagster community" dialog if it shows."""
        skip = self.page.get_by_role("button", name="Skip")
        with contextlib.suppress(Exception):
            skip.wait_for(state="visible", timeout=3_000)
            skip.click()
            skip.wait_for(state="hidden", timeout=10_000)

    def visible(self, text: str, *, timeout_ms: float = 120_000, scope: Any = None) -> bool:
        """Whether ``text`` (exact) shows within ``timeout_ms``."""
        try:
            (scope or self.page).get_by_text(text, exact=True).first.wait_for(
                state="visible", timeout=timeout_ms
            )
        except Exception:
            return False
        return True

    def partitions_page(self, n: int, label: str) -> None:
        """generated_images' Partitions tab: time to render its header counts, every key listed."""
        started = time.monotonic()
        self.page.goto(asset_url(self.url, IMAGES_ASSET, view="partitions"), wait_until="domcontentloaded")
        selected = f"{n:,} Partitions Selected"
        ok = self.visible(selected)
        self.timings[f"partitions page ({label}): '{selected}' shown"] = time.monotonic() - started
        self.report.check(ok, f"partitions page ({label}): {selected!r}")
        self.page.wait_for_load_state("networkidle")
        self.timings[f"partitions page ({label}): network idle"] = time.monotonic() - started
        self.skip_nux()

    def partition_list(self, batches: list[str]) -> None:
        """The partition list scrolls from the first key to the last (it is virtualized: only the rows
        in view are in the page, so the last key appears only once scrolled to)."""
        first, last = batches[0], batches[-1]
        self.report.check(self.visible(first), f"partitions page: first partition {first!r} listed")
        self.report.check(
            not self.visible(last, timeout_ms=100), f"partitions page: {last!r} not drawn before scrolling"
        )
        self.page.get_by_text(first, exact=True).first.hover()
        steps = 0
        while steps < 100 and not self.page.get_by_text(last, exact=True).count():
            self.page.mouse.wheel(0, 2_000)
            self.page.wait_for_timeout(100)
            steps += 1
        shown = self.visible(last, timeout_ms=5_000)
        self.report.check(shown, f"partitions page: last partition {last!r} listed after {steps} wheel steps")

    def dialog(self, n: int) -> Any:
        """Open "Materialize...", select All, check that all ``n`` are selected; returns the dialog."""
        started = time.monotonic()
        self.page.get_by_role("button", name="Materialize…").first.click()
        dialog = self.page.get_by_role("dialog")
        dialog.first.wait_for(state="visible")
        launch_button = dialog.get_by_role("button", name="Launch backfill")
        launch_button.wait_for(state="visible")
        self.timings["dialog: open to 'Launch backfill' shown"] = time.monotonic() - started
        self.page.wait_for_load_state("networkidle")
        self.timings["dialog: open to network idle"] = time.monotonic() - started
        started = time.monotonic()
        # A dynamic partitions definition opens on "Custom" with nothing selected: the user picks All.
        dialog.get_by_role("button", name="All", exact=True).click()
        ok = self.visible(f"{n} partitions selected", scope=dialog) and self.visible(
            f"{n:,} partitions", scope=dialog
        )
        self.timings[f"dialog: 'All' to '{n} partitions selected'"] = time.monotonic() - started
        self.report.check(
            ok, f"dialog: 'All' selects {n} partitions ({n:,} partitions, {n} partitions selected)"
        )
        return dialog

    def capture_launch(self, dialog: Any, n: int) -> None:
        """Click "Launch backfill"; the request is recorded and aborted (see :meth:`attach`)."""
        dialog.get_by_role("button", name="Launch backfill").click()
        deadline = time.monotonic() + 30
        while self.launch_body is None and time.monotonic() < deadline:
            self.page.wait_for_timeout(200)
        names = (
            ((self.launch_body or {}).get("variables") or {}).get("backfillParams", {}).get("partitionNames")
        )
        self.report.check(
            names is not None and len(names) == n,
            f"dialog: 'Launch backfill' sends launchPartitionBackfill with {n} partition names",
            f"got {None if names is None else len(names)}",
        )
        self.page.keyboard.press("Escape")

    def shot(self, name: str) -> None:
        """Save the viewport as docs/screenshots/``name``."""
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path))
        self.report.screenshots.append(path)


# --- 3. The operations replayed ------------------------------------------------------------------------


@dataclass
class Timing:
    """One operation replayed ``repeat`` times: milliseconds and the response's size."""

    name: str
    ms: list[float]
    response_bytes: int


def replay(url: str, operations: dict[str, Operation], repeat: int) -> list[Timing]:
    """Each recorded query sent ``repeat`` times in a row (mutations never), slowest median first."""
    out = []
    with httpx.Client(timeout=120) as client:
        for op in operations.values():
            query = str(op.body.get("query", ""))
            if not query or query.lstrip().startswith("mutation"):
                continue
            times, size = [], 0
            for _ in range(repeat):
                started = time.perf_counter()
                resp = client.post(f"{url}/graphql?op={op.name}", json=op.body)
                times.append((time.perf_counter() - started) * 1000)
                resp.raise_for_status()
                size = len(resp.content)
            out.append(Timing(op.name, times, size))
    return sorted(out, key=lambda t: -statistics.median(t.ms))


# --- 4. The backfill ---------------------------------------------------------------------------------

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) { __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on Error { message } } }
"""

CANCEL_BACKFILL = """
mutation CancelBackfill($backfillId: String!) { cancelPartitionBackfill(backfillId: $backfillId) {
  __typename ... on CancelBackfillSuccess { backfillId } ... on PythonError { message } } }
"""


def launch_body_or_default(captured: dict[str, Any] | None, batches: list[str]) -> dict[str, Any]:
    """The dialog's own request when it was captured, else the same request written here."""
    if captured is not None:
        return captured
    params = {
        "tags": [{"key": "dagster/from_ui", "value": "true"}],
        "assetSelection": [{"path": [IMAGES_ASSET]}],
        "partitionNames": batches,
    }
    return {
        "operationName": "LaunchPartitionBackfill",
        "query": LAUNCH_BACKFILL,
        "variables": {"backfillParams": params},
    }


@dataclass
class Sample:
    """The backfill's runs at one moment (seconds since the launch was accepted)."""

    t: float
    created: int
    queued: int
    in_progress: int
    done: int


@dataclass
class BackfillResult:
    """What the daemon did with the backfill in the measured window."""

    backfill_id: str
    accept_s: float
    window_s: float
    samples: list[Sample]
    first_run_s: float | None
    all_created_s: float | None
    created: int
    succeeded: int
    failed: int
    max_sampled_in_progress: int
    max_overlap_from_records: int
    run_wall_s: list[float]
    first_failure: str
    phases: dict[str, list[float]]
    others: dict[str, int]
    done_window: tuple[float, float, int] | None
    cancel_accept_s: float = 0.0
    cancel_done_s: float | None = None
    cancel_status: str = ""
    after_cancel: dict[str, int] = field(default_factory=dict)


def _counts(instance: Any, backfill_id: str) -> tuple[int, int, int, int]:
    """(created, queued, in progress, finished) runs of the backfill: four counts in the run table."""
    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    tags = {BACKFILL_ID_TAG: backfill_id}
    status = dg.DagsterRunStatus

    def count(statuses: list[Any] | None = None) -> int:
        return int(instance.get_runs_count(dg.RunsFilter(tags=tags, statuses=statuses or [])))

    created = count()
    queued = count([status.QUEUED, status.NOT_STARTED])
    # What a "run"-granularity pool counts: launched and not finished.
    in_progress = count([status.STARTING, status.STARTED, status.CANCELING])
    done = count([status.SUCCESS, status.FAILURE, status.CANCELED])
    return created, queued, in_progress, done


def _records(instance: Any, backfill_id: str) -> list[Any]:
    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    return list(instance.get_run_records(dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})))


#: A run's phases, between these events (the first of each type in its log).
PHASES = (
    ("launched to run process up", "RUN_STARTING", "RUN_START"),
    ("run process up to step start", "RUN_START", "STEP_START"),
    ("the step (the asset's own work)", "STEP_START", "STEP_SUCCESS"),
    ("step end to run end", "STEP_SUCCESS", "RUN_SUCCESS"),
)


def run_phases(instance: Any, run_ids: list[str]) -> dict[str, list[float]]:
    """Seconds each finished run spent in each of :data:`PHASES` (where the run has both events)."""
    from dagster._core.events import DagsterEventType

    # By member name: the values are the older PIPELINE_* names.
    types = {DagsterEventType[name] for _, a, b in PHASES for name in (a, b)}
    out: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    for run_id in run_ids:
        first: dict[str, float] = {}
        for entry in instance.all_logs(run_id, of_type=types):
            name = entry.dagster_event_type.name if entry.dagster_event_type else ""
            first.setdefault(name, entry.timestamp)
        for label, a, b in PHASES:
            if a in first and b in first:
                out[label].append(first[b] - first[a])
    return out


def other_runs(instance: Any, since: float, backfill_id: str) -> dict[str, int]:
    """Runs created since ``since`` that are not the backfill's (the automation's), by asset."""
    import datetime as dt

    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    after = dt.datetime.fromtimestamp(since, tz=dt.UTC)
    counts: dict[str, int] = {}
    for record in instance.get_run_records(dg.RunsFilter(created_after=after)):
        run = record.dagster_run
        if run.tags.get(BACKFILL_ID_TAG) == backfill_id:
            continue
        assets = ",".join(sorted(k.to_user_string() for k in run.asset_selection or [])) or run.job_name
        counts[assets] = counts.get(assets, 0) + 1
    return counts


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t opens)."""
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def run_backfill(dep: Deployment, body: dict[str, Any], minutes: float, on_half: Any) -> BackfillResult:
    """Launch the backfill, sample its runs for ``minutes``, cancel it; ``on_half()`` runs midway."""
    instance = dep.instance()
    started = time.monotonic()
    result = graphql(dep.url, str(body["query"]), body["variables"])["launchPartitionBackfill"]
    accept_s = time.monotonic() - started
    if result["__typename"] != "LaunchBackfillSuccess":
        raise CheckFailed(f"launchPartitionBackfill failed: {result}")
    backfill_id = str(result["backfillId"])
    launched_at = time.time()
    say(f"backfill {backfill_id} accepted in {accept_s:.2f} s; sampling the runs for {minutes:g} min")
    samples: list[Sample] = []
    window = minutes * 60
    half_done = False
    first_run_s = all_created_s = None
    last_print = 0.0
    while (elapsed := time.monotonic() - started) < window:
        dep.servers.check_alive()
        created, queued, in_progress, done = _counts(instance, backfill_id)
        samples.append(Sample(elapsed, created, queued, in_progress, done))
        if created and first_run_s is None:
            first_run_s = elapsed
        if created >= len(dep.batches) and all_created_s is None:
            all_created_s = elapsed
        if elapsed - last_print >= 30:
            say(
                f"  t={elapsed:4.0f} s runs created {created}, queued {queued}, in progress {in_progress}, done {done}"
            )
            last_print = elapsed
        if not half_done and elapsed >= window / 2:
            half_done = True
            on_half()
        time.sleep(2.0)
    window_s = time.monotonic() - started
    try:
        res = _analyse(dep, instance, backfill_id, accept_s, launched_at, window_s, samples)
        res.first_run_s, res.all_created_s = first_run_s, all_created_s
    finally:
        # Whatever the analysis did, the backfill is cancelled (the daemon would go on for hours).
        outcome = cancel(dep, instance, backfill_id)
    res.cancel_accept_s, res.cancel_done_s, res.cancel_status, res.after_cancel = outcome
    return res


def _analyse(
    dep: Deployment,
    instance: Any,
    backfill_id: str,
    accept_s: float,
    launched_at: float,
    window_s: float,
    samples: list[Sample],
) -> BackfillResult:
    """The window's numbers from the samples and the backfill's run records."""
    records = _records(instance, backfill_id)
    now = time.time()
    statuses = [r.dagster_run.status.value for r in records]
    walls = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    intervals = [(r.start_time, r.end_time or now) for r in records if r.start_time]
    ends = sorted(r.end_time - launched_at for r in records if r.end_time)
    # Steady state: from the first run's end to the window's end (process start-up of the first runs,
    # and the daemon's first submissions, are not in the rate).
    done_window = (ends[0], window_s, len(ends) - 1) if len(ends) >= 2 else None
    failed = [r.dagster_run.run_id for r in records if r.dagster_run.status.value == "FAILURE"]
    first_failure = f"{failed[0]}: {run_errors(dep.url, failed[0])[:300]}" if failed else ""
    return BackfillResult(
        backfill_id=backfill_id,
        accept_s=accept_s,
        window_s=window_s,
        samples=samples,
        first_run_s=None,
        all_created_s=None,
        created=len(records),
        succeeded=statuses.count("SUCCESS"),
        failed=statuses.count("FAILURE"),
        max_sampled_in_progress=max((s.in_progress for s in samples), default=0),
        max_overlap_from_records=max_overlap(intervals),
        run_wall_s=walls,
        first_failure=first_failure,
        phases=run_phases(instance, [r.dagster_run.run_id for r in records if r.end_time][:20]),
        others=other_runs(instance, launched_at, backfill_id),
        done_window=done_window,
    )


def cancel(
    dep: Deployment, instance: Any, backfill_id: str, timeout_s: float = 420
) -> tuple[float, float | None, str, dict[str, int]]:
    """cancelPartitionBackfill, then wait until the backfill is CANCELED and no run of it is left.

    Returns the seconds to accept the cancel, the seconds until done (None: not within
    ``timeout_s``), the backfill's last status and its runs by state.
    """
    started = time.monotonic()
    out = graphql(dep.url, CANCEL_BACKFILL, {"backfillId": backfill_id})["cancelPartitionBackfill"]
    accept_s = time.monotonic() - started
    if out["__typename"] != "CancelBackfillSuccess":
        raise CheckFailed(f"cancelPartitionBackfill failed: {out}")
    say(f"cancelPartitionBackfill accepted in {accept_s:.2f} s; waiting for the daemon")
    status, left = "", {}
    while time.monotonic() - started < timeout_s:
        dep.servers.check_alive()
        status = instance.get_backfill(backfill_id).status.value
        created, queued, in_progress, done = _counts(instance, backfill_id)
        left = {"created": created, "queued": queued, "in progress": in_progress, "finished": done}
        if status == "CANCELED" and queued == 0 and in_progress == 0:
            return accept_s, time.monotonic() - started, status, left
        time.sleep(2.0)
    return accept_s, None, status, left


# --- 5. The report -----------------------------------------------------------------------------------


def per_minute(count: float, seconds: float) -> float:
    return count * 60 / seconds if seconds > 0 else float("nan")


def creation_rate(samples: list[Sample]) -> tuple[float, float]:
    """Runs created per minute while the daemon was creating them: (rate, seconds it took)."""
    if not samples or samples[-1].created == 0:
        return 0.0, 0.0
    final = samples[-1].created
    first = next(s for s in samples if s.created > 0)
    last = next(s for s in samples if s.created >= final)
    span = max(last.t - first.t, 1e-9)
    return per_minute(final - first.created, span) if final > first.created else float("inf"), last.t


def print_table(
    args: argparse.Namespace,
    setup: dict[str, float],
    browser: Browser,
    idle: list[Timing],
    busy: list[Timing],
    bf: BackfillResult | None,
    report: Report,
) -> None:
    """Every number, one table per part."""
    n = args.batches
    print(flush=True)
    print(f"ui scale: {n} partitions of generated_images (1 row each), kie pool limit {args.pool_limit},")
    print(
        "  PostgreSQL instance, QueuedRunCoordinator, dagster-webserver + dagster-daemon, emulator at Kie's"
    )
    print(f"  limits (20 createTask/10 s, latency {args.latency} s), {os.cpu_count()} cores shared")
    print(f"  load average at the start / the end: {setup.pop('load_start'):.1f} / {os.getloadavg()[0]:.1f}")
    for what, secs in setup.items():
        print(f"  {what:<60} {secs:8.1f} s")
    print("\nthe pages in Chromium (headless)")
    for what, secs in browser.timings.items():
        print(f"  {what:<60} {secs:8.2f} s")
    busy_by = {t.name: t for t in busy}
    print(
        f"\nGraphQL operations the two pages issued, replayed {args.repeat}x each (median / max ms, response KB)"
    )
    print(f"  {'operation':<34} {'in browser':>11} {'idle':>17} {'during backfill':>17} {'KB':>7}")
    for t in idle:
        op = browser.operations[t.name]
        b = busy_by.get(t.name)
        busy_col = f"{statistics.median(b.ms):7.0f} / {max(b.ms):6.0f}" if b else "-"
        print(
            f"  {t.name:<34} {statistics.median(op.browser_ms):9.0f}ms "
            f"{statistics.median(t.ms):7.0f} / {max(t.ms):6.0f}  {busy_col:>16} {t.response_bytes / 1024:7.1f}"
        )
    if bf is not None:
        print(
            f"\nthe {n}-partition backfill (launchPartitionBackfill as the dialog sends it), {bf.window_s / 60:.1f} min"
        )
        rate, took = creation_rate(bf.samples)
        rows: list[tuple[str, str]] = [
            ("launchPartitionBackfill accepted in", f"{bf.accept_s:.2f} s"),
            ("first run created after", f"{bf.first_run_s:.1f} s" if bf.first_run_s is not None else "never"),
            (
                "runs created (queued) by the daemon",
                f"{bf.created} of {n}"
                + (
                    f", all in {bf.all_created_s:.1f} s"
                    if bf.all_created_s is not None
                    else f" in {took:.0f} s"
                ),
            ),
            ("runs created per minute", f"{rate:.0f}"),
            (
                f"max runs in progress, sampled every 2 s (limit {args.pool_limit})",
                str(bf.max_sampled_in_progress),
            ),
            ("max runs in progress, from the run records' start/end", str(bf.max_overlap_from_records)),
            ("runs finished in the window", f"{bf.succeeded} succeeded, {bf.failed} failed"),
        ]
        if bf.run_wall_s:
            walls = sorted(bf.run_wall_s)
            rows.append(
                (
                    "run wall time (start to end) median / max",
                    f"{statistics.median(walls):.1f} / {walls[-1]:.1f} s",
                )
            )
        if bf.done_window:
            first_end, end, count = bf.done_window
            steady = per_minute(count, end - first_end)
            rows.append(("runs completed per minute (after the first end)", f"{steady:.1f}"))
            rows.append(
                ("overall, from the launch", f"{per_minute(bf.succeeded + bf.failed, bf.window_s):.1f}/min")
            )
            rows.append(
                (f"{n} runs at that rate (extrapolated)", f"{n / steady:.0f} min ({n / steady / 60:.1f} h)")
            )
        for label, values in bf.phases.items():
            if values:
                rows.append((f"  {label} (median of {len(values)})", f"{statistics.median(values):.1f} s"))
        rows.append(("other runs started in the window (automation)", str(bf.others or "none")))
        if bf.first_failure:
            rows.append(("first failed run", bf.first_failure))
        if rate and bf.all_created_s is None:
            rows.append((f"{n} runs created at that rate (extrapolated)", f"{n / rate:.0f} min"))
        queued_end = bf.samples[-1].queued if bf.samples else 0
        rows.append(("runs waiting in the queue at the window's end", str(queued_end)))
        rows.append(("cancelPartitionBackfill accepted in", f"{bf.cancel_accept_s:.2f} s"))
        rows.append(
            (
                "backfill canceled, nothing queued or running, after",
                f"{bf.cancel_done_s:.1f} s"
                if bf.cancel_done_s is not None
                else f"not within 420 s ({bf.cancel_status})",
            )
        )
        rows.append(("after the cancel", ", ".join(f"{k} {v}" for k, v in bf.after_cancel.items())))
        for what, value in rows:
            print(f"  {what:<60} {value}")
    print()
    print(f"checks: {len(report.passed)} passed, {len(report.failed)} failed")
    for line in report.failed:
        print(f"  FAILED {line}")
    for path in report.screenshots:
        print(f"  screenshot: {path.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------------------


def measure(dep: Deployment, args: argparse.Namespace, setup: dict[str, float], report: Report) -> None:
    """The pages, the replayed operations, the backfill; prints the table."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    n = len(dep.batches)
    idle: list[Timing] = []
    busy: list[Timing] = []
    bf: BackfillResult | None = None
    with sync_playwright() as pw:
        launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=launch_args)
        try:
            context = chromium.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(120_000)
            browser = Browser(context.new_page(), dep.url, report)
            browser.attach()
            browser.partitions_page(n, "first load")
            browser.partitions_page(n, "reload")
            report.check(browser.visible(f"Missing ({n})"), f"partitions page: 'Missing ({n})'")
            browser.partition_list(dep.batches)
            browser.shot("partitions-1000.png")
            dialog = browser.dialog(n)
            browser.shot("backfill-dialog-1000.png")
            browser.capture_launch(dialog, n)
            say("replaying the pages' GraphQL operations (idle)")
            idle = replay(dep.url, browser.operations, args.repeat)
            body = launch_body_or_default(browser.launch_body, dep.batches)

            def midway() -> None:
                nonlocal busy
                say("replaying the pages' GraphQL operations (during the backfill)")
                busy = replay(dep.url, browser.operations, args.repeat)
                browser.partitions_page(n, "during the backfill")
                browser.shot("partitions-1000-backfill.png")

            if args.minutes > 0:
                bf = run_backfill(dep, body, args.minutes, midway)
                most = max(bf.max_sampled_in_progress, bf.max_overlap_from_records)
                report.check(
                    most <= args.pool_limit,
                    f"backfill: at most {most} runs in progress (pool limit {args.pool_limit})",
                )
        finally:
            chromium.close()
    print_table(args, setup, browser, idle, busy, bf, report)


def main(argv: list[str] | None = None) -> int:
    """Set up, measure, print the table; 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="partitions (one row each)")
    parser.add_argument(
        "--minutes", type=float, default=6.0, help="how long the daemon works on the backfill"
    )
    parser.add_argument("--pool-limit", type=int, default=POOL_LIMIT, help="the kie pool's limit")
    parser.add_argument("--latency", default="1,3", help="the emulator's task latency MIN,MAX s")
    parser.add_argument("--repeat", type=int, default=5, help="times each GraphQL operation is replayed")
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP stop the benchmark the way Ctrl-C does, so the servers are always stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    ensure_chromium()
    ensure_playwright()
    report = Report()
    # The machine is shared: the load says how much of it the benchmark had.
    setup: dict[str, float] = {"load_start": os.getloadavg()[0]}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="kie-ui-scale-") as tmp,
            deployment(Path(tmp), args, setup) as dep,
        ):
            if args.hold:
                say(f"holding {dep.url} until Ctrl-C")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
                return 0
            measure(dep, args, setup, report)
    except CheckFailed as exc:
        say(f"FAIL {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 1
    return 1 if report.failed else 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
