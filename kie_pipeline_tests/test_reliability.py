"""Reliability and security: faults survived, nothing paid twice or lost, no secret leaked."""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kie_pipeline.emulator import STUCK_MARKER, EmulatorConfig, EmulatorServer, Faults

from .pipeline_helpers import SAMPLE, Pipeline, metadata, spawn_partition, write_manifest


def records(env: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (env / "store" / "tasks").glob("*.json")]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.step_failure_data.error.message


def test_100_rows_survive_500s_429s_drops_malformed_and_slow_responses(env, emulator, instance) -> None:
    emulator.config.faults.error_500 = 0.10
    emulator.config.faults.error_429 = 0.10
    emulator.config.faults.drop = 0.02
    emulator.config.faults.malformed = 0.01
    emulator.config.faults.slow = 0.01
    emulator.config.faults.slow_seconds = 1.5  # beyond the client's timeout below: a timed-out request
    write_manifest(
        str(env / "prompts.csv"), [{"id": f"r{i}", "batch": "big", "prompt": f"p {i}"} for i in range(100)]
    )
    # Kie's own limits are not what this test is about: lift them so 100 rows finish quickly.
    pipe = Pipeline(
        instance, timeout_s=1.0, retry={"max_attempts": 12}, limits={"poll_limit": 1000, "create_limit": 1000}
    )
    emulator.config.poll_limit = emulator.config.create_limit = 1000
    pipe.manifest()
    first = metadata(pipe.batch("big"))
    stats = emulator.emulator.snapshot()
    # A dropped, malformed or timed-out createTask may have created its task: such rows end
    # uncertain and are never retried within the run, so no row gets two tasks in one run.
    assert first["images_succeeded"] + first["uncertain"] == 100 and first["images_failed"] == 0
    assert stats["created"] <= 100
    assert first["retries"] >= stats["faults"]["error_500"] + stats["faults"]["error_429"]
    assert set(stats["faults"]) >= {"error_500", "error_429"}
    # The next run submits the uncertain rows again (and says so): every extra task it may pay
    # for was announced as uncertain by the first run.
    emulator.config.faults = Faults()
    second = metadata(pipe.batch("big"))
    assert second["images_succeeded"] == 100 and second["resubmitted_uncertain"] == first["uncertain"]
    assert emulator.emulator.snapshot()["created"] == stats["created"] + first["uncertain"]


def test_401_at_the_start_fails_at_once(env, emulator, instance, monkeypatch) -> None:
    monkeypatch.setenv("KIE_API_KEY", "wrong-key")
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "KIE_API_KEY" in message and "wrong-key" not in message
    stats = emulator.emulator.snapshot()
    assert stats["created"] == 0 and stats["create_requests"] == 0  # 0 images attempted
    assert stats["unauthorized"] == 1  # the credit balance, looked up first, was refused: stop there
    assert records(env) == []


def test_task_stuck_past_the_wait_timeout_is_resumed_next_run(env, emulator, instance) -> None:
    rows = [dict(r) for r in SAMPLE]
    rows[0]["prompt"] = f"A fox {STUCK_MARKER}"
    write_manifest(str(env / "prompts.csv"), rows)
    pipe = Pipeline(instance, poll={"timeout_s": 0.5})
    pipe.manifest()
    md = metadata(pipe.batch("animals"))
    assert md["timed_out"] == 1 and md["images_succeeded"] == 2
    table = pd.read_parquet(env / "store" / "generated_images" / "animals.parquet").set_index("id")
    assert table.loc["fox", "fail_code"] == "TIMEOUT" and table.loc["fox", "task_id"]
    assert [r["status"] for r in records(env) if r["id"] == "fox"] == ["timeout"]
    again = metadata(pipe.batch("animals"))
    assert again["images_resumed"] == 1 and again["images_created"] == 0  # polled, not created again
    assert emulator.emulator.snapshot()["created"] == 3


def test_download_url_failing_too_is_recorded_and_retried(env, emulator, instance) -> None:
    emulator.config.result_url_ttl = 0.0
    pipe = Pipeline(instance, retry={"max_attempts": 2})
    pipe.manifest()
    real_route = emulator.config.download_url_ttl
    emulator.config.download_url_ttl = -1.0  # fresh links are already expired: the fallback fails too
    md = metadata(pipe.batch("cities"))
    assert md["download_failed"] == 2
    table = pd.read_parquet(env / "store" / "generated_images" / "cities.parquet")
    assert set(table["fail_code"]) == {"DOWNLOAD_FAILED"} and table["task_id"].notna().all()
    assert all(r["status"] == "download_failed" for r in records(env))
    emulator.config.download_url_ttl = real_route
    again = metadata(pipe.batch("cities"))
    assert again["images_resumed"] == 2 and again["images_succeeded"] == 2 and again["images_created"] == 0
    assert emulator.emulator.snapshot()["created"] == 2


def test_unwritable_store_fails_clearly_and_records_nothing_false(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    (env / "store" / "images").write_text("not a folder")  # image writes now fail (even as root)
    result = pipe.batch("animals", raise_on_error=False)
    assert not result.success
    assert "not writable" in failure_message(result)
    assert [r["status"] for r in records(env)] == ["submitted"] * 3  # nothing recorded as done
    (env / "store" / "images").unlink()
    md = metadata(pipe.batch("animals"))
    assert md["images_resumed"] == 3 and md["images_created"] == 0 and md["images_succeeded"] == 3
    assert emulator.emulator.snapshot()["created"] == 3


def _done(env: Path, n: int) -> bool:
    return sum(r["status"] == "success" for r in records(env)) >= n


@pytest.mark.parametrize(
    "kill_when",
    [
        pytest.param(lambda env: len(records(env)) >= 2, id="during-submission"),
        pytest.param(lambda env: len(records(env)) >= 6, id="during-polling"),
        pytest.param(lambda env: _done(env, 2), id="during-downloads"),
        pytest.param(lambda env: _done(env, 6), id="before-the-table-is-written"),
    ],
)
def test_sigkill_at_any_point_then_rerun_creates_each_task_once(env, emulator, instance, kill_when) -> None:
    emulator.config.latency = (0.6, 1.2)
    emulator.config.create_limit, emulator.config.create_period = 2, 0.5
    write_manifest(
        str(env / "prompts.csv"), [{"id": f"r{i}", "batch": "big", "prompt": f"p {i}"} for i in range(6)]
    )
    pipe = Pipeline(instance, limits={"create_limit": 2, "create_period_s": 0.5})
    pipe.manifest()
    options = {
        "poll": {"initial_s": 0.1, "max_s": 0.2},
        "limits": {"create_limit": 2, "create_period_s": 0.5},
    }
    proc = spawn_partition(str(env / "home"), "big", options)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not kill_when(env):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the kill must land while the run is still going"
    paid = emulator.emulator.snapshot()["created"]
    recorded = sum(bool(r.get("task_id")) for r in records(env))
    intents = sum(r["status"] == "creating" for r in records(env))
    # Only a task whose answer was still on the wire at the kill can be unrecorded (at most the
    # createTask calls in flight: 2 per window here), and its intent record names the row.
    lost_in_flight = paid - recorded
    assert 0 <= lost_in_flight <= intents and lost_in_flight <= 2
    md = metadata(pipe.batch("big"))
    assert emulator.emulator.snapshot()["created"] == 6 + lost_in_flight  # == rows when none in flight
    assert md["images_succeeded"] == 6
    assert md["images_created"] == 6 - recorded and md["resubmitted_uncertain"] == intents


def test_api_key_never_written_logged_or_shown(tmp_path, monkeypatch, caplog) -> None:
    secret = "sk-LEAKCHECK-" + os.urandom(8).hex()
    caplog.set_level(logging.DEBUG)
    config = EmulatorConfig(api_key=secret, render_scale=1 / 16, latency=(0.02, 0.1))
    config.faults.error_500 = 0.2
    # The temporary folder too: rate-limit windows, locks and fallback files are written there.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with EmulatorServer(config) as server:
        write_manifest(str(tmp_path / "prompts.csv"), SAMPLE)
        monkeypatch.setenv("KIE_API_KEY", secret)
        monkeypatch.setenv("KIE_BASE_URL", server.url)
        monkeypatch.setenv("KIE_MANIFEST", str(tmp_path / "prompts.csv"))
        monkeypatch.setenv("KIE_STORE", str(tmp_path / "store"))
        (tmp_path / "home").mkdir()
        with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "home")) as instance:
            pipe = Pipeline(instance)
            pipe.all()
            server.config.faults.error_500 = 0.0
            server.config.faults.force_code, server.config.faults.force_count = 402, 100
            (tmp_path / "prompts.csv").write_text("id,batch,prompt\nnew,animals,new prompt\n")
            pipe.manifest()
            failed = pipe.batch("animals", raise_on_error=False)
            assert not failed.success
            shown = [str(e) for e in failed.all_events] + [repr(pipe.resources["kie"])]
            logs = [e.message for e in instance.all_logs(failed.run_id)]
    written = b""
    names = []
    for path in tmp_path.rglob("*"):
        names.append(str(path.relative_to(tmp_path)))
        if path.is_file():
            written += path.read_bytes()
    assert len(written) > 10_000  # the store, the tables and Dagster's own sqlite event logs
    assert list((tmp / "kie-pipeline").glob("*.window"))  # the shared limiter's files were scanned
    assert secret.encode() not in written
    assert not [n for n in names if secret in n or secret[-8:] in n]  # nor in any file or folder name
    assert secret not in caplog.text + "\n".join(shown) + "\n".join(logs)


def test_servers_bind_to_loopback_by_default() -> None:
    import inspect

    from kie_pipeline.emulator.__main__ import build_parser
    from kie_pipeline.emulator.server import serve

    with EmulatorServer() as server:
        assert server.host == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
