"""The kie-pipeline command: validate, estimate's table, every --help, the emulator and the demo.

In process through click's CliRunner where the command returns (validate, help), as real
subprocesses of the installed ``kie-pipeline`` script where it serves or runs Dagster (emulator,
demo). Nothing of ours is mocked: the manifests, the store and the servers are real.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from kie_pipeline.cli import _demo_progress, cli, main
from kie_pipeline.demo import watch_settled
from kie_pipeline.pipeline.record import RecordStatus, RequestRecord, ResultCopy
from kie_pipeline.pipeline.store import TaskStore

from .pipeline_helpers import SAMPLE, write_manifest

EXE = str(Path(sys.executable).parent / "kie-pipeline")
COMMANDS = ["expand", "validate", "estimate", "emulator", "receiver", "demo"]
#: Commands whose README line is still to be written (issue 14: the lead adds expand's; then empty this).


def run(*args: str) -> object:
    """The command in process, stdout and stderr apart (click >= 8.2)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def problem_rows(out: str) -> list[list[str]]:
    """The validate table's body: [row, id, field, problem...] per line whose first cell is a row."""
    rows = []
    for line in out.splitlines():
        cells = line.split()
        if cells and (cells[0].isdigit() or cells[0] == "-") and len(cells) >= 3:
            rows.append(cells)
    return rows


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the project's own variables (the command must not need them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_") and k != "DAGSTER_HOME"}
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- validate ------------------------------------------------------------------------------------------


def test_validate_a_valid_manifest_prints_one_summary_line_and_exits_0(tmp_path) -> None:
    write_manifest(str(tmp_path / "m.csv"), SAMPLE)
    result = run("validate", str(tmp_path / "m.csv"))
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert f"is valid: {len(SAMPLE)} rows, 2 batches (animals 3, cities 2), 1 model" in line
    assert result.stderr == ""


def test_validate_one_bad_row_names_its_row_id_and_field(tmp_path) -> None:
    rows = [*SAMPLE[:2], {"id": "bad", "batch": "animals", "prompt": "x", "aspect_ratio": "7:7"}, *SAMPLE[2:]]
    write_manifest(str(tmp_path / "m.csv"), rows)
    result = run("validate", str(tmp_path / "m.csv"))
    assert result.exit_code == 1
    [cells] = problem_rows(result.stdout)
    assert cells[:3] == ["3", "bad", "aspect_ratio"]
    assert "1 problem(s) in 1 row(s)" in result.stdout


def test_validate_many_bad_rows_lists_every_problem_as_plain_text(tmp_path) -> None:
    rows = [{"id": f"r{i}", "batch": "b", "prompt": f"picture {i}"} for i in range(150)]
    for i in range(0, 150, 3):
        rows[i]["prompt"] = ""  # 50 empty prompts
    rows[1]["batch"] = "not a batch"
    rows[2]["model"] = "no-such-model"
    rows[4]["id"] = "r3"  # a duplicate id
    rows[5]["id"] = "[bold]r5[red]"  # rich markup in a value: shown as written
    rows[7]["id"] = "[bold]r5[red]"
    write_manifest(str(tmp_path / "m.csv"), rows)
    expected = {(str(i + 1), "prompt") for i in range(0, 150, 3)}
    expected |= {("2", "batch"), ("3", "model"), ("5", "id"), ("8", "id")}

    everything = run("validate", str(tmp_path / "m.csv"), "--limit", "0")
    assert everything.exit_code == 1
    table = problem_rows(everything.stdout)
    assert {(c[0], c[2]) for c in table} == expected and len(table) == len(expected)
    assert ["8", "[bold]r5[red]", "id", "duplicates", "the", "id", "of", "row", "6"] in table
    # No vertical rules or padding at line ends: grep/awk/cut work on the table.
    assert "│" not in everything.stdout and not any(
        line.endswith(" ") for line in everything.stdout.splitlines()
    )
    assert f"{len(expected)} problem(s) in {len(expected)} row(s)." in everything.stdout

    shown = run("validate", str(tmp_path / "m.csv"))  # the table stops at --limit's default (100)
    assert len(problem_rows(shown.stdout)) == min(100, len(expected))
    as_json = run("validate", str(tmp_path / "m.csv"), "--format", "json")
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["valid"] is False
    assert {(str(p["row"]), p["field"]) for p in report["problems"]} == expected


def test_validate_an_empty_manifest_is_invalid(tmp_path) -> None:
    """Zero rows is an export gone wrong, not a valid batch of nothing: the pipeline refuses it (no
    partition to materialize), so validate must fail it too, saying why; a 0-byte file as well."""
    (tmp_path / "header.csv").write_text("id,batch,prompt\n")
    result = run("validate", str(tmp_path / "header.csv"))
    assert result.exit_code == 1
    assert problem_rows(result.stdout) == [["-", "rows", "the", "manifest", "has", "no", "rows"]]
    (tmp_path / "zero.csv").write_bytes(b"")
    result = run("validate", str(tmp_path / "zero.csv"))
    assert result.exit_code == 1 and "cannot be read" in result.stdout and "Traceback" not in result.output


def test_validate_a_missing_file_exits_2_on_stderr(tmp_path) -> None:
    missing = str(tmp_path / "nope.csv")
    result = run("validate", missing)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"kie-pipeline validate: {missing}: no manifest at {missing}"
    assert main(["validate", missing]) == 2  # main() returns the status too


def test_validate_and_estimate_through_pipes_print_no_spinner_nor_colour(tmp_path) -> None:
    """Not a terminal (CI, a pipe): stdout holds only the output, stderr stays empty."""
    write_manifest(str(tmp_path / "m.csv"), SAMPLE)
    for args in (["validate", "m.csv"], ["estimate", "m.csv", "--store", "store"]):
        done = subprocess.run(
            [EXE, *args], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert "\x1b" not in done.stdout
    assert done.stdout.splitlines()[1].split() == [
        "batch",
        "model",
        "create",
        "reuse",
        "resume",
        "expired",
        "credits",
    ]


# -- help ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["kie-pipeline", *COMMANDS])
def test_every_command_has_help_with_examples(command) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: kie-pipeline {' '.join(command)}".rstrip())
    assert "Examples:" in result.stdout and "kie-pipeline" in result.stdout.split("Examples:")[1]
    assert run(*command, "-h").stdout == result.stdout


def test_the_group_help_lists_the_commands_in_workflow_order() -> None:
    out = run("--help").stdout
    listed = [line.split()[0] for line in out.split("Commands:")[1].split("\n\n")[0].strip().splitlines()]
    assert listed == COMMANDS


def test_help_imports_neither_dagster_nor_pandas() -> None:
    code = (
        "import sys; from kie_pipeline.cli import main; main(['--help']); main(['validate', '--help']);"
        "print(sorted(m for m in ('dagster', 'pandas', 'kie_pipeline.emulator') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_usage_errors_exit_2() -> None:
    assert main(["no-such-command"]) == 2
    assert main(["estimate"]) == 2  # MANIFEST is missing
    assert main(["estimate", "m.csv", "--prices", "{not json"]) == 2
    assert main(["emulator", "--latency", "fast"]) == 2
    assert main(["demo", "--latency", "2,1"]) == 2
    assert main(["--help"]) == 0


# -- emulator ------------------------------------------------------------------------------------------


def test_the_emulator_command_serves_with_its_options(tmp_path) -> None:
    port = free_port()
    cmd = [EXE, "emulator", "--port", str(port), "--api-key", "cli-key", "--balance", "4321"]
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/chat/credit"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(url, headers={"Authorization": "Bearer cli-key"})
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        assert response.status_code == 200 and response.json()["data"] == 4321
        assert httpx.get(url, headers={"Authorization": "Bearer emulator-key"}).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"Kie emulator on http://127.0.0.1:{port} (key 'cli-key', balance 4321)" in out


# -- demo ----------------------------------------------------------------------------------------------


def record(key: str, status: RecordStatus, copies: int = 0) -> RequestRecord:
    images = [ResultCopy(uri=f"images/{key}.png", sha256="0" * 64, bytes=1)] * copies
    return RequestRecord(key=key, status=status, images=images)


def test_the_demo_bar_counts_rows_settled_from_the_task_records(tmp_path) -> None:
    store = TaskStore(str(tmp_path / "store"))
    keys = [f"k{i}" for i in range(6)]
    store.save(record("k0", RecordStatus.SUCCESS, copies=1))  # copied: settled
    store.save(record("k1", RecordStatus.SUCCESS))  # succeeded, not copied yet: not settled
    store.save(record("k2", RecordStatus.SUBMITTED))
    store.save(record("k3", RecordStatus.FAIL))  # failed for good: settled
    seen: list[tuple[int, int]] = []
    with watch_settled(store, keys, lambda done, total: seen.append((done, total)), interval=0.05):
        store.save(record("k1", RecordStatus.SUCCESS, copies=1))
        store.save(record("k2", RecordStatus.TIMEOUT))
        time.sleep(0.3)
    assert seen[0] == (2, 6) and seen[-1] == (4, 6)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    # On a terminal, the bar shows "settled/total"; off one, there is no bar and no callback.
    from rich.console import Console

    screen = io.StringIO()
    with _demo_progress(Console(file=screen, force_terminal=True, width=80)) as report:
        report(2, 6)
        report(6, 6)
    assert "6/6" in screen.getvalue()
    with _demo_progress(None) as report:
        assert report is None


def test_the_demo_command_runs_a_small_manifest_end_to_end(tmp_path) -> None:
    """~10 s: the demo's emulator, receiver and Dagster runs on two rows, in a folder of its own."""
    write_manifest(str(tmp_path / "tiny.csv"), SAMPLE[:2])
    done = subprocess.run(
        [EXE, "demo", "--manifest", "tiny.csv", "--store", "store", "--latency", "0,0.1"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prompt_manifest: 2 rows in batches animals" in done.stdout
    assert "2 new Kie tasks, 0 reused" in done.stdout and "By state: {'success': 2}" in done.stdout
    assert (tmp_path / "store" / "image_catalog.parquet").exists()
    # The default Dagster home is ./.dagster_home, created with a dagster.yaml; no bar off a terminal.
    assert (tmp_path / ".dagster_home" / "dagster.yaml").exists()
    assert "rows settled" not in done.stderr and "No dagster instance configuration" not in done.stderr


# -- the README's lines --------------------------------------------------------------------------------


def _readme_command_lines() -> list[tuple[dict[str, str], list[str]]]:
    """The README's "The kie-pipeline command" block: (environment assignments, argv) per line."""
    import shlex

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## The `kie-pipeline` command", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        words = shlex.split(line.split("#", 1)[0])
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        out.append((env, [w for w in words if w not in {f"{k}={v}" for k, v in env.items()}]))
    return out


def _serves(argv: list[str], env: dict[str, str], port: int, probe: str) -> str:
    """Start ``argv``; wait until ``probe`` on ``port`` answers over HTTP; stop it; its stdout."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}{probe}")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, f"{argv} did not start"
                time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    return out


def test_the_readme_command_lines_run_as_written(tmp_path) -> None:
    """Each line of the README's command block (a free port for the servers; `make demo` runs the
    demo line, the Makefile's own command)."""
    repo = Path(__file__).resolve().parent.parent
    lines = _readme_command_lines()
    assert [argv[1] for _, argv in lines] == COMMANDS
    for env, argv in lines:
        exe = [EXE, *argv[1:]]
        environment = clean_env(KIE_STORE=str(tmp_path / "store"), **env)
        if argv[1] == "expand":  # its output goes to tmp_path, not into the repo
            at = exe.index("-o") + 1
            exe[at] = str(tmp_path / os.path.basename(exe[at]))
            result = subprocess.run(exe, cwd=repo, env=environment, capture_output=True, text=True)
            assert result.returncode == 0 and os.path.exists(exe[at]), result.stdout + result.stderr
        elif argv[1] in ("validate", "estimate"):
            result = subprocess.run(
                exe, cwd=repo, env=environment, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, result.stdout + result.stderr
        elif argv[1] in ("emulator", "receiver"):
            port = free_port()
            exe = [str(port) if a in ("8765", "8766") else a for a in exe]
            if env.get("KIE_CALLBACK_SECRET") == "...":
                environment["KIE_CALLBACK_SECRET"] = "a-long-random-secret"
            out = _serves(exe, environment, port, "/")
            assert f"127.0.0.1:{port}" in out
