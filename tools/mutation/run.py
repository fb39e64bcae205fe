"""Mutation testing of the safety-critical modules with mutmut, one group of modules at a time.

mutmut 3 reads one ``[tool.mutmut]`` table and runs one test selection for everything it mutates.
Each group below has its own test selection, so each runs in its own folder,
``mutants/<group>/``, that holds links to the code and the tests, a ``pyproject.toml`` made of the
project's own (pytest settings and the shared ``[tool.mutmut]`` table) plus the group's files and
tests, and mutmut's work folder ``mutants/<group>/mutants/``. mutmut keeps its results there, so a
second run re-tests the functions that changed and the mutants that survived before (``--fresh``,
or deleting ``mutants/``, starts afresh).

    python tools/mutation/run.py                      # the default groups, then the report
    python tools/mutation/run.py client manifest      # some groups
    python tools/mutation/run.py --project /tmp/old   # another checkout's code and tests

Within a group mutmut runs, for each mutant, only the selected tests that called the mutated
function (it records that in a first run of the selection), fastest first, stopping at the first
failure; a surviving mutant costs every such test.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = "kie_pipeline_tests"


@dataclass(frozen=True)
class Group:
    """Modules mutated together and the tests that must kill their mutants."""

    files: list[str]
    tests: list[str]
    #: mutmut mutant-name globs when only part of a file is in scope (empty: every mutant of ``files``).
    only: list[str] = field(default_factory=list)


# The test selections keep a whole run within 1-2 hours on 2 cores (see docs/mutation.md). The
# Dagster tests that spawn subprocesses are left out: mutmut cannot see which functions a
# subprocess calls, and each such test costs seconds per mutant.
GROUPS: dict[str, Group] = {
    "client": Group(
        files=[
            "kie_pipeline/client/transport.py",
            "kie_pipeline/client/ratelimit.py",
            "kie_pipeline/client/download.py",
        ],
        tests=[f"{TESTS}/test_client.py", f"{TESTS}/test_money_client.py"],
    ),
    # Only the key's redaction in client.py: _Secret and the client's repr.
    "redaction": Group(
        files=["kie_pipeline/client/client.py"],
        only=[
            "kie_pipeline.client.client.xǁ_Secretǁ*",
            "kie_pipeline.client.client.xǁAsyncKieClientǁ__repr__*",
        ],
        tests=[
            f"{TESTS}/test_client.py::test_api_key_never_in_reprs_errors_or_logs",
            f"{TESTS}/test_reliability.py::test_api_key_never_written_logged_or_shown",
        ],
    ),
    "manifest": Group(
        files=["kie_pipeline/pipeline/manifest.py"],
        tests=[
            f"{TESTS}/test_manifest.py",
            f"{TESTS}/test_correctness.py::test_every_catalog_column_is_reserved_in_the_manifest",
        ],
    ),
    "store": Group(
        files=["kie_pipeline/pipeline/store.py"],
        tests=[
            f"{TESTS}/test_pipeline.py::test_end_to_end_catalog_schema_and_contents",
            f"{TESTS}/test_pipeline.py::test_failed_rows_are_recorded_and_retried",
            f"{TESTS}/test_abuse.py::test_corrupt_record_is_set_aside_and_recovered_without_paying_again",
            f"{TESTS}/test_abuse.py::test_store_failing_mid_run_loses_no_task_id",
        ],
    ),
    # generation and the modules split out of it: ~1,400 mutants, and only Dagster runs reach them
    # (3-4 s a test): about two hours with 2 jobs, so not in the default run
    # (`make mutation MUTATION_GROUPS=generation`).
    "generation": Group(
        files=[
            "kie_pipeline/pipeline/generation.py",
            "kie_pipeline/pipeline/batch_state.py",
            "kie_pipeline/pipeline/copying.py",
            "kie_pipeline/pipeline/settling.py",
            "kie_pipeline/pipeline/submitting.py",
            "kie_pipeline/pipeline/outcome.py",
            "kie_pipeline/pipeline/result_rows.py",
        ],
        tests=[
            f"{TESTS}/test_pipeline.py::test_end_to_end_catalog_schema_and_contents",
            f"{TESTS}/test_pipeline.py::test_failed_rows_are_recorded_and_retried",
            f"{TESTS}/test_pipeline.py::test_402_mid_partition_keeps_what_was_paid_and_resumes_after_top_up",
            f"{TESTS}/test_pipeline.py::test_expired_result_urls_fall_back_to_download_url",
            f"{TESTS}/test_correctness.py::test_lost_create_answer_is_uncertain_not_paid_twice_in_the_run",
            f"{TESTS}/test_correctness.py::test_result_rows_descriptions_and_reserved_names_come_from_one_schema",
        ],
    ),
}
#: What `make mutation` runs when no group is named.
DEFAULT_GROUPS = ["client", "redaction", "manifest", "store"]


def toml_value(value: object) -> str:
    """TOML for the values a mutmut table holds (JSON's strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {value!r} as TOML")


def without_table(text: str, table: str) -> str:
    """``text`` (a TOML document) without the table ``[table]``."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == f"[{table}]"
        if not skipping:
            out.append(line)
    return "".join(out)


def existing_tests(project: Path, tests: list[str]) -> list[str]:
    """The tests whose file and function exist in ``project`` (an older checkout may lack some)."""
    kept = []
    for test in tests:
        path, _, name = test.partition("::")
        source = project / path
        if source.is_file() and (not name or f"def {name.split('[')[0]}(" in source.read_text()):
            kept.append(test)
        else:
            print(f"    (not in {project}: {test})")
    return kept


def prepare(name: str, group: Group, project: Path, workdir: Path) -> tuple[Path, list[str]]:
    """The group's folder: links to the code and tests, and its pyproject.toml. Returns it and its tests."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    for link in ("kie_pipeline", TESTS):
        target = folder / link
        if target.is_symlink() and target.resolve() != (project / link).resolve():
            target.unlink()
            shutil.rmtree(folder / "mutants", ignore_errors=True)  # results of another checkout
        if not target.is_symlink():
            target.symlink_to(project / link, target_is_directory=True)

    tests = existing_tests(project, group.tests)
    files = [f for f in group.files if (project / f).is_file()]
    if not tests or not files:
        raise SystemExit(f"{name}: nothing to run in {project} (files {files}, tests {tests})")

    own = (REPO / "pyproject.toml").read_text()
    shared = tomllib.loads(own).get("tool", {}).get("mutmut", {})
    mutmut = {**shared, "only_mutate": files, "pytest_add_cli_args_test_selection": tests}
    table = "\n[tool.mutmut]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in mutmut.items())
    # The project's pytest settings (timeouts, warning filters) come from the checkout under test.
    text = without_table((project / "pyproject.toml").read_text(), "tool.mutmut") + table
    if not (folder / "pyproject.toml").is_file() or (folder / "pyproject.toml").read_text() != text:
        (folder / "pyproject.toml").write_text(text)
    return folder, tests


def retest_survivors(folder: Path, files: list[str], globs: list[str]) -> int:
    """Forget the survivors' results so that mutmut tests them again.

    mutmut re-tests a mutant only when its function changed; a test written to kill a survivor
    would otherwise not be seen until ``mutants/`` is deleted. Killed mutants stay cached.
    """
    forgotten = 0
    for file in files:
        meta = folder / "mutants" / (file + ".meta")
        if not meta.is_file():
            continue
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for key, code in codes.items():
            if code in (0, 5, 33) and (not globs or any(fnmatch.fnmatch(key, g) for g in globs)):
                codes[key] = None
                forgotten += 1
        meta.write_text(json.dumps(data, indent=4))
    return forgotten


def snapshot(folder: Path, project: Path, files: list[str], tests: list[str]) -> None:
    """Record what was tested: when, and a hash of each mutated file and test file (the tree moves)."""
    paths = sorted({*files, *(t.partition("::")[0] for t in tests)})
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "project": str(project),
        "sha256": {p: hashlib.sha256((project / p).read_bytes()).hexdigest()[:12] for p in paths},
    }
    (folder / "snapshot.json").write_text(json.dumps(record, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "groups",
        nargs="*",
        help=f"groups to run, of {', '.join(GROUPS)} (default: {' '.join(DEFAULT_GROUPS)})",
    )
    parser.add_argument("--project", type=Path, default=REPO, help="checkout whose code and tests to use")
    parser.add_argument(
        "--workdir", type=Path, help="where the groups' folders go (default: PROJECT/mutants)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    parser.add_argument(
        "--mutants",
        nargs="+",
        metavar="GLOB",
        help="only these mutants (e.g. 'kie_pipeline.client.download.*')",
    )
    parser.add_argument("--fresh", action="store_true", help="forget every earlier result of these groups")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    args = parser.parse_args()

    names = args.groups or DEFAULT_GROUPS
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; known: {list(GROUPS)}")
    project = args.project.resolve()
    workdir = (args.workdir or project / "mutants").resolve()
    mutmut = str(Path(sys.executable).parent / "mutmut")

    failed = []
    for name in names:
        group = GROUPS[name]
        print(f"\n=== mutmut: {name} ({', '.join(group.files)})", flush=True)
        if args.fresh:
            shutil.rmtree(workdir / name, ignore_errors=True)
        folder, tests = prepare(name, group, project, workdir)
        print(f"    tests: {' '.join(tests)}", flush=True)
        globs = args.mutants or group.only
        forgotten = retest_survivors(folder, group.files, globs)  # survived or no tests
        if forgotten:
            print(f"    re-testing {forgotten} mutants that survived last time", flush=True)
        snapshot(folder, project, group.files, tests)
        # PYTHONPATH would let the tests import the wrong checkout; mutmut puts mutants/ first itself.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        code = subprocess.call(
            [mutmut, "run", "--max-children", str(args.jobs), *globs],
            cwd=folder,
            env=env,
        )
        if code != 0:
            print(f"!!! mutmut run for {name} exited {code}", flush=True)
            failed.append(name)

    if not args.no_report:
        report = [
            sys.executable,
            str(Path(__file__).with_name("report.py")),
            "--workdir",
            str(workdir),
            *names,
        ]
        subprocess.call(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
