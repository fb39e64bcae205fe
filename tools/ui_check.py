"""``make ui-check``: the Dagster UI checked in a real browser, against the local Kie emulator.

Steps (every server on 127.0.0.1, on free ports, all stopped at the end, also on failure):

1. Installs what is missing: Debian's ``chromium`` (apt-get; sudo when not root) and Playwright's
   Python package (pip, into this interpreter's environment). Playwright drives that Chromium through
   ``executable_path``: ``playwright install`` (a browser download) is never run.
2. Starts the emulator, a callback receiver (the sample's Suno row requires a callBackUrl) and
   ``dagster dev -w workspace.yaml`` with a temporary ``DAGSTER_HOME`` (a copy of
   ``deploy/dagster.yaml``) and a temporary ``KIE_STORE``, as ``make dev`` does.
3. Materializes the sample (``data/prompts.csv``) through Dagster's GraphQL API, as the UI's
   Materialize buttons do: ``prompt_manifest``, then every partition of ``generated_images`` (the
   manifest's batches), then ``image_catalog``; waits for each run by polling.
4. Opens the asset pages in Chromium and asserts that they render: the metadata labels
   (:data:`METADATA_KEYS`), a loaded inline image (a ``data:`` URI with ``naturalWidth > 0``) from
   the contact sheet and the gallery, and the partitions grid with every batch. Screenshots go to
   ``docs/screenshots/``.

Exit status 0 when every check passed, 1 with the failed checks listed otherwise. ``--serve`` keeps
the servers up afterwards (Ctrl-C stops them) to look around by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"
MANIFEST = ROOT / "data" / "prompts.csv"

#: The asset keys (one path element each) the check materializes and opens.
MANIFEST_ASSET = "prompt_manifest"
IMAGES_ASSET = "generated_images"
CATALOG_ASSET = "image_catalog"

#: The metadata labels each asset's latest materialization must show in the UI (one place to adapt).
METADATA_KEYS: dict[str, tuple[str, ...]] = {
    IMAGES_ASSET: ("contact_sheet", "by_state"),
    CATALOG_ASSET: ("by_batch", "by_model", "by_media_type", "gallery"),
}
#: Keys whose markdown must hold a loaded inline image (a data: URI).
IMAGE_KEYS: dict[str, str] = {IMAGES_ASSET: "contact_sheet", CATALOG_ASSET: "gallery"}
#: For a transition (metadata keys being renamed): a key of METADATA_KEYS the asset does not emit is
#: looked for under the older name given here, or (None) only reported as a warning. ``--strict``
#: ignores this table. Empty: every key of METADATA_KEYS must be emitted and shown. (It held
#: {"contact_sheet": "preview", "by_state": None, "by_model": None, "by_media_type": None} until
#: the assets emitted the keys.)
LEGACY_KEYS: dict[str, str | None] = {}

#: Generous limits: two shared cores, and `dagster dev` loads the code location in a subprocess.
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 900
PAGE_TIMEOUT_MS = 120_000
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def say(text: str) -> None:
    """One progress line, flushed (make shows it as it comes)."""
    print(f"ui-check: {text}", flush=True)


class CheckFailed(Exception):
    """A check that did not pass (the message says which and why)."""


# --- 1. What the check needs -----------------------------------------------------------------------


def ensure_chromium() -> None:
    """Install Debian's ``chromium`` when /usr/bin/chromium is missing (apt-get; sudo when not root)."""
    if os.access(CHROMIUM, os.X_OK):
        return
    if not shutil.which("apt-get"):
        raise CheckFailed(f"{CHROMIUM} is missing and there is no apt-get: install Chromium by hand")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise CheckFailed(f"{CHROMIUM} is missing: run `apt-get install -y chromium` as root")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    say("installing Debian's chromium (apt-get install -y chromium)")
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # A fresh container has no package lists yet.
        subprocess.run([*prefix, "apt-get", "update"], env=env, check=False)
        if subprocess.run(install, env=env, check=False).returncode != 0:
            raise CheckFailed("apt-get install -y chromium failed (see above)")
    if not os.access(CHROMIUM, os.X_OK):
        raise CheckFailed(f"chromium installed but {CHROMIUM} is not there")


def ensure_playwright() -> None:
    """pip-install Playwright's Python package into this interpreter's environment when missing.

    Only the package: its browser download (``playwright install``) is never run, the check drives
    Debian's Chromium instead.
    """
    try:
        importlib.import_module("playwright.sync_api")
        return
    except ImportError:
        pass
    say(f"installing Playwright's Python package ({sys.executable} -m pip install playwright)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "playwright"], check=True)
    importlib.invalidate_caches()
    importlib.import_module("playwright.sync_api")


# --- 2. The servers --------------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Servers:
    """The processes this check started (each the leader of its own process group) and their logs."""

    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in its own session (so its children are stopped with it), logging to a file."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        """Raise when a server has exited (with the end of its log)."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise CheckFailed(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a server's log."""
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM each process group this check started, newest first; SIGKILL what outlives 30 s."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _name, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Children (dagster dev's webserver, daemon, code server) share the group: kill leftovers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def wait_for(what: str, ready: Callable[[], bool], servers: Servers, timeout: float) -> None:
    """Poll ``ready`` until it returns True; raise after ``timeout`` s or when a server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers.check_alive()
        with contextlib.suppress(OSError, httpx.HTTPError, ValueError, KeyError):
            if ready():
                return
        time.sleep(0.5)
    raise CheckFailed(f"{what} was not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


@contextlib.contextmanager
def running_servers(workdir: Path) -> Iterator[tuple[str, Servers]]:
    """The emulator, the callback receiver and ``dagster dev``; yields the Dagster UI's URL and them."""
    emulator_port, receiver_port, dagster_port = free_port(), free_port(), free_port()
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KIE_STORE": str(workdir / "store"),
        "KIE_MANIFEST": str(MANIFEST),
        "KIE_BASE_URL": f"http://127.0.0.1:{emulator_port}",
        "KIE_UPLOAD_URL": f"http://127.0.0.1:{emulator_port}",
        "KIE_API_KEY": "emulator-key",
        "KIE_CALLBACK_URL": f"http://127.0.0.1:{receiver_port}",
        "KIE_CALLBACK_SECRET": "ui-check-callback-secret",
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("KIE_STORE_OPTIONS", "KIE_CREATE_LIMIT", "KIE_POLL_LIMIT", "KIE_WEBHOOK_KEY"):
        env.pop(var, None)
    servers = Servers(workdir)
    try:
        py = sys.executable
        emulator = [py, "-m", "kie_pipeline.emulator", "--port", str(emulator_port), "--latency", "0.5,2"]
        servers.start("emulator", emulator, env)
        receiver = [py, "-m", "kie_pipeline.cli", "receiver", "--port", str(receiver_port)]
        servers.start("receiver", [*receiver, "--store", env["KIE_STORE"]], env)
        dagster = [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
        servers.start("dagster", [*dagster, "-p", str(dagster_port)], env)
        wait_for("the emulator", lambda: port_open(emulator_port), servers, 60)
        wait_for("the callback receiver", lambda: port_open(receiver_port), servers, 60)
        url = f"http://127.0.0.1:{dagster_port}"
        say(f"dagster dev starting at {url} (DAGSTER_HOME={home})")
        wait_for("dagster dev", lambda: location_loaded(url), servers, START_TIMEOUT_S)
        say("dagster dev is up and the code location is loaded")
        yield url, servers
    except BaseException:
        for name, _ in servers.procs:
            say(f"--- last lines of {name}'s log ---\n{servers.tail(name)}")
        raise
    finally:
        say("stopping the servers")
        servers.stop()


# --- 3. Materializing through GraphQL --------------------------------------------------------------


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """One GraphQL request to the Dagster webserver; its ``data`` (raises on errors)."""
    resp = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    if body.get("errors"):
        raise CheckFailed(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
    return body["data"]


WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on RepositoryLocation { name repositories { name } }
                          ... on PythonError { message errorChain { error { message } } } } } } } }
"""


def location_loaded(url: str) -> bool:
    """Whether the webserver answers and the code location has loaded (raises on a load error)."""
    entries = graphql(url, WORKSPACE)["workspaceOrError"]["locationEntries"]
    for entry in entries:
        loaded = entry["locationOrLoadError"]
        if loaded and loaded["__typename"] == "PythonError":
            causes = [c["error"]["message"].strip() for c in loaded.get("errorChain") or []]
            detail = "\n".join([loaded["message"].strip(), *causes])
            raise CheckFailed(f"the code location {entry['name']} failed to load: {detail}")
    return bool(entries) and all(
        e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        for e in entries
    )


ASSET_NODE = """
query Node($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { jobNames partitionKeys
    repository { name location { name } } } } }
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on Error { message } } }
"""

RUN = """
query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }
"""

RUN_ERRORS = """
query Events($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on RunFailureEvent { message } } } } }
"""


def asset_node(url: str, key: str) -> dict[str, Any]:
    """The asset's node (its jobs, partition keys, repository); raises when the asset is not there."""
    node = graphql(url, ASSET_NODE, {"key": {"path": [key]}})["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise CheckFailed(f"the asset {key} is not in the code location ({node['__typename']})")
    return node


def launch(url: str, key: str, partition: str | None = None) -> str:
    """Launch a run materializing ``key`` (one partition of it); returns the run id."""
    node = asset_node(url, key)
    jobs = [j for j in node["jobNames"] if j.startswith("__ASSET_JOB")] or node["jobNames"]
    if not jobs:
        raise CheckFailed(f"no job materializes {key}")
    tags = [{"key": "dagster/partition", "value": partition}] if partition is not None else []
    tags.append({"key": "ui-check", "value": "true"})
    params = {
        "selector": {
            "repositoryLocationName": node["repository"]["location"]["name"],
            "repositoryName": node["repository"]["name"],
            "jobName": jobs[0],
            "assetSelection": [{"path": [key]}],
        },
        "executionMetadata": {"tags": tags},
    }
    result = graphql(url, LAUNCH, {"params": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise CheckFailed(f"launching {key} {partition or ''} failed: {result}")
    return str(result["run"]["runId"])


def wait_runs(url: str, runs: dict[str, str], servers_alive: Callable[[], None]) -> None:
    """Poll until every run (label → id) ends; raise with the step errors of any that did not succeed."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        servers_alive()
        for label, run_id in runs.items():
            if status.get(label) not in TERMINAL:
                status[label] = graphql(url, RUN, {"id": run_id})["runOrError"].get("status", "?")
        if all(s in TERMINAL for s in status.values()):
            break
        time.sleep(1.0)
    else:
        raise CheckFailed(f"runs still not finished after {RUN_TIMEOUT_S} s: {status}")
    failed = {label: s for label, s in status.items() if s != "SUCCESS"}
    if failed:
        details = [
            f"{label}: {s} (run {runs[label]}) {run_errors(url, runs[label])}" for label, s in failed.items()
        ]
        raise CheckFailed("runs did not succeed:\n  " + "\n  ".join(details))


def run_errors(url: str, run_id: str) -> str:
    """The run's step failure messages, shortened (what to print when a run failed)."""
    logs = graphql(url, RUN_ERRORS, {"id": run_id})["logsForRun"]
    messages = []
    for event in logs.get("events", []):
        if event.get("error"):
            messages.append(f"{event.get('stepKey')}: {event['error']['message'].strip()[:400]}")
        elif event.get("message") and event["__typename"] == "RunFailureEvent":
            messages.append(event["message"][:400])
    return "; ".join(messages)


def manifest_batches() -> list[str]:
    """The sample manifest's batches, in first-seen order."""
    with MANIFEST.open(newline="") as fh:
        return list(dict.fromkeys(row["batch"] for row in csv.DictReader(fh)))


def materialize_sample(url: str, servers: Servers) -> list[str]:
    """prompt_manifest, every batch of generated_images, then image_catalog; returns the batches."""
    started = time.monotonic()
    say(f"materializing {MANIFEST_ASSET}")
    wait_runs(url, {MANIFEST_ASSET: launch(url, MANIFEST_ASSET)}, servers.check_alive)
    batches = list(asset_node(url, IMAGES_ASSET)["partitionKeys"])
    expected = manifest_batches()
    if sorted(batches) != sorted(expected):
        raise CheckFailed(f"{IMAGES_ASSET}'s partitions are {batches}, the manifest's batches {expected}")
    say(f"materializing {IMAGES_ASSET}: {len(batches)} partitions {batches} (the 'kie' pool runs 2 at once)")
    runs = {f"{IMAGES_ASSET}[{b}]": launch(url, IMAGES_ASSET, b) for b in batches}
    wait_runs(url, runs, servers.check_alive)
    say(f"materializing {CATALOG_ASSET}")
    wait_runs(url, {CATALOG_ASSET: launch(url, CATALOG_ASSET)}, servers.check_alive)
    say(f"the sample is materialized ({time.monotonic() - started:.0f} s)")
    return batches


LATEST = """
query Latest($key: AssetKeyInput!, $partitions: [String!]) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { assetMaterializations(partitions: $partitions, limit: 1) {
    partition metadataEntries { label } } } } }
"""


def emitted_keys(url: str, key: str, partition: str | None = None) -> set[str]:
    """The metadata labels of the asset's (partition's) latest materialization."""
    variables = {"key": {"path": [key]}, "partitions": [partition] if partition else None}
    events = graphql(url, LATEST, variables)["assetNodeOrError"]["assetMaterializations"]
    if not events:
        raise CheckFailed(f"{key} {partition or ''} has no materialization")
    return {e["label"] for e in events[0]["metadataEntries"]}


# --- 4. The pages ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What was checked: passed lines, warnings and failures."""

    passed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        """Record one assertion."""
        (self.passed if ok else self.failed).append(what if ok else f"{what}: {why}" if why else what)
        say(f"{'ok  ' if ok else 'FAIL'} {what}{'' if ok or not why else f' ({why})'}")
        return ok


def keys_to_check(url: str, asset: str, report: Report, *, partition: str | None, strict: bool) -> list[str]:
    """The labels to look for on the page: METADATA_KEYS, with LEGACY_KEYS for keys not emitted yet."""
    emitted = emitted_keys(url, asset, partition)
    out = []
    for key in METADATA_KEYS[asset]:
        if key in emitted or strict or key not in LEGACY_KEYS:
            if report.check(key in emitted, f"{asset}: the materialization carries `{key}`", "not emitted"):
                out.append(key)
            continue
        legacy = LEGACY_KEYS[key]
        if legacy and legacy in emitted:
            report.warnings.append(f"{asset}: `{key}` not emitted yet; checked its older name `{legacy}`")
            out.append(legacy)
        else:
            report.warnings.append(f"{asset}: `{key}` not emitted yet (LEGACY_KEYS): not checked")
    return out


def image_key(asset: str, checked: list[str]) -> str | None:
    """The label whose markdown holds the inline image (the legacy name when that is what is shown)."""
    key = IMAGE_KEYS[asset]
    if key in checked:
        return key
    legacy = LEGACY_KEYS.get(key)
    return legacy if legacy in checked else None


def check_pages(url: str, batches: list[str], report: Report, *, strict: bool) -> None:
    """Open the asset pages in Chromium, assert they render, and save the screenshots."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    partition = batches[-1] if batches else None
    images_keys = keys_to_check(url, IMAGES_ASSET, report, partition=partition, strict=strict)
    catalog_keys = keys_to_check(url, CATALOG_ASSET, report, partition=None, strict=strict)
    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            errors: list[str] = []

            def new_page(width: int) -> Any:
                context = browser.new_context(viewport={"width": width, "height": 1000})
                context.set_default_timeout(PAGE_TIMEOUT_MS)
                page = context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)[:200]))
                return page

            Pages(new_page(1920), url, report).asset_graph(len(batches), "asset-graph.png")
            ui = Pages(new_page(1440), url, report)
            ui.metadata(
                f"{IMAGES_ASSET} partition {partition!r}",
                asset_url(url, IMAGES_ASSET, view="partitions", partition=partition or ""),
                images_keys,
                image_key(IMAGES_ASSET, images_keys),
                "generated-images-partition.png",
                "contact-sheet.png",
            )
            ui.partitions(batches, "partitions.png")
            ui.metadata(
                CATALOG_ASSET,
                asset_url(url, CATALOG_ASSET, view="events"),
                catalog_keys,
                image_key(CATALOG_ASSET, catalog_keys),
                "image-catalog.png",
                "gallery.png",
            )
            report.warnings.extend(f"JavaScript error on a page: {e}" for e in errors)
        finally:
            browser.close()


class Pages:
    """The asset pages, each opened, asserted on and saved as a screenshot."""

    def __init__(self, page: Any, url: str, report: Report) -> None:
        self.page, self.url, self.report = page, url, report

    def open(self, url: str) -> None:
        """Go to ``url`` and dismiss the first-visit "Join the Dagster community" dialog if it shows."""
        self.page.goto(url, wait_until="domcontentloaded")
        self.page.wait_for_load_state("networkidle")
        skip = self.page.get_by_role("button", name="Skip")
        with contextlib.suppress(Exception):
            skip.wait_for(state="visible", timeout=3_000)
            skip.click()
            skip.wait_for(state="hidden", timeout=10_000)

    def shot(self, name: str) -> None:
        """Save the viewport as docs/screenshots/``name``."""
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path))
        self.report.screenshots.append(path)

    def visible(self, locator: Any) -> bool:
        """Whether ``locator`` shows within the page timeout."""
        try:
            locator.first.wait_for(state="visible")
        except Exception:
            return False
        return True

    def asset_graph(self, partitions: int, screenshot: str) -> None:
        """The global asset lineage: the three assets' nodes and generated_images' partition count.

        Wide (1920 px, navigation hidden), so that Dagster draws the nodes with their details rather
        than as zoomed-out boxes.
        """
        self.open(f"{self.url}/asset-groups")
        hide = self.page.get_by_role("button", name="Hide navigation")
        if hide.count():
            hide.first.click()
        # The node's "N partitions" line is only drawn in the graph (not in the asset list beside it).
        label = f"{partitions} partitions"
        shown = self.visible(self.page.get_by_text(label, exact=True))
        self.report.check(shown, f"asset graph: {IMAGES_ASSET} shows {label!r}")
        for key in (MANIFEST_ASSET, IMAGES_ASSET, CATALOG_ASSET):
            # Once in the asset list, once as a node of the graph.
            count = self.page.get_by_text(key, exact=True).count()
            self.report.check(count >= 2, f"asset graph: shows {key}", f"{count} occurrence(s)")
        self.page.wait_for_timeout(1_000)  # the graph's layout animation
        self.shot(screenshot)

    def metadata(
        self, what: str, url: str, keys: list[str], image: str | None, screenshot: str, dialog_shot: str
    ) -> None:
        """A materialization's metadata: every label in ``keys``, and the inline image of ``image``."""
        self.open(url)
        rows = {key: self.page.locator("tr", has=self.page.get_by_text(key, exact=True)) for key in keys}
        for key, row in rows.items():
            self.report.check(self.visible(row), f"{what}: metadata `{key}` is shown")
        if image is None:
            self.shot(screenshot)
            return
        row = rows[image].first
        with contextlib.suppress(Exception):
            row.scroll_into_view_if_needed()
        self.page.wait_for_timeout(500)
        self.shot(screenshot)
        # Long markdown sits behind "[Show Markdown]" (a dialog); short markdown is shown in the row.
        scope = row
        button = row.get_by_text("[Show Markdown]")
        if button.count():
            button.first.click()
            scope = self.page.get_by_role("dialog")
            scope.first.wait_for(state="visible")
        images = scope.locator("img[src^='data:image/']")
        loaded = self.visible(images)
        sizes = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)") if loaded else []
        self.report.check(
            loaded and bool(sizes) and all(w > 0 for w in sizes),
            f"{what}: `{image}` shows {len(sizes)} loaded inline image(s) (data: URI, naturalWidth > 0)",
            f"natural widths {sizes}" if sizes else "no data: image",
        )
        self.page.wait_for_timeout(500)
        self.shot(dialog_shot)
        if scope is not row:
            self.page.get_by_role("button", name="Close").first.click()

    def partitions(self, batches: list[str], screenshot: str) -> None:
        """generated_images' Partitions tab: every batch listed, all of them materialized."""
        self.open(asset_url(self.url, IMAGES_ASSET, view="partitions"))
        for batch in batches:
            shown = self.visible(self.page.get_by_text(batch, exact=True))
            self.report.check(shown, f"partitions: batch {batch!r} is listed")
        label = f"Materialized ({len(batches)})"
        self.report.check(self.visible(self.page.get_by_text(label)), f"partitions: {label!r}")
        self.shot(screenshot)


def asset_url(base: str, key: str, **params: str) -> str:
    """The UI's page of an asset (``/assets/<key>?view=...``)."""
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return f"{base}/assets/{quote(key)}" + (f"?{query}" if query else "")


# --- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the whole check; 0 when every assertion passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="ignore LEGACY_KEYS: every key must be there")
    parser.add_argument("--serve", action="store_true", help="keep the servers up afterwards (Ctrl-C)")
    parser.add_argument("--no-pages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--url", help="check the pages of a running `dagster dev` whose sample is materialized (no servers)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = Report()
    # SIGTERM/SIGHUP (make killed, a closed terminal) and SIGINT (ignored in background jobs) stop the
    # check the way Ctrl-C does, so the servers are always stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        ensure_chromium()
        ensure_playwright()
        if args.url:
            check_pages(args.url.rstrip("/"), manifest_batches(), report, strict=args.strict)
            return _summary(report, started)
        with (
            tempfile.TemporaryDirectory(prefix="kie-ui-check-") as tmp,
            running_servers(Path(tmp)) as (url, servers),
        ):
            batches = materialize_sample(url, servers)
            if not args.no_pages:
                check_pages(url, batches, report, strict=args.strict)
            if args.serve:
                say(f"serving {url} until Ctrl-C")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    except CheckFailed as exc:
        report.failed.append(str(exc))
        say(f"FAIL {exc}")
    except httpx.HTTPError as exc:
        report.failed.append(f"the Dagster webserver did not answer: {exc!r}")
    except KeyboardInterrupt:
        report.failed.append("interrupted")
    return _summary(report, started)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _summary(report: Report, started: float) -> int:
    """Print what was checked and where the screenshots are; the exit status."""
    elapsed = time.monotonic() - started
    print(flush=True)
    say(f"{len(report.passed)} checks passed, {len(report.failed)} failed, in {elapsed:.0f} s")
    for line in report.warnings:
        say(f"warning: {line}")
    for path in report.screenshots:
        say(f"screenshot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if report.failed:
        say("FAILED:\n  " + "\n  ".join(report.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
