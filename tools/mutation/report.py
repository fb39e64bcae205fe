"""The mutation score per module and overall, and the surviving mutants, from mutmut's results.

    python tools/mutation/report.py                 # every group run so far (mutants/<group>/)
    python tools/mutation/report.py client --no-diff
    python tools/mutation/report.py --workdir /tmp/old/mutants --markdown

Score = (killed + timeout) / (mutants tested + mutants no selected test reaches). A timeout is a
kill (the mutant hung a test); "no tests" counts against the score (nothing would notice that
mutant); mutants not yet checked (an interrupted run) are shown and left out of the score.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import GROUPS, REPO

#: mutmut's exit codes as mutmut.stats.status_by_exit_code names them (importing it needs a mutmut config).
STATUS = {
    0: "survived",
    1: "killed",
    3: "killed",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "caught by type check",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    2: "interrupted",
    None: "not checked",
}
WEAK = ("survived", "no tests")


def status(code: int | None) -> str:
    return STATUS.get(code, "suspicious")


def load(folder: Path, file: str, only: list[str]) -> dict[str, int | None]:
    meta = folder / "mutants" / (file + ".meta")
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if only:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in only)}
    return codes


def function_span(source: str, mutant: str) -> tuple[int, int] | None:
    """First and last line of the function a mutant name points at (``mod.xǁClassǁname__mutmut_3``)."""
    mangled = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        cls, name = mangled[2:].split("ǁ", 1)
    else:
        cls, name = None, mangled[2:]
    tree = ast.parse(source)
    scopes = (
        [tree] if cls is None else [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    )
    for scope in scopes:
        for node in scope.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                return first, node.end_lineno or node.lineno
    return None


def describe(folder: Path, file: str, mutant: str) -> tuple[int | None, list[str]]:
    """The source line of a mutant and its diff lines (``-`` original, ``+`` mutant)."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        reset_config()
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            diff = get_diff_for_mutant(mutant, path=file)
    except Exception as e:  # an out-of-date mutants/ folder: say so, keep reporting
        return None, [f"  (no diff: {e})"]
    finally:
        os.chdir(cwd)
    changed = [line for line in diff.splitlines() if line[:1] in "-+" and not line.startswith(("---", "+++"))]
    # Where the first removed line sits in the function, by the diff's own count (a function may
    # hold the same line twice).
    offset, counted = None, 0
    for line in diff.splitlines():
        if line.startswith("@@"):
            counted = int(line.split()[1].lstrip("-").split(",")[0]) - 1
        elif line.startswith(("---", "+++")):
            continue
        elif line.startswith("-"):
            offset = counted
            break
        elif not line.startswith("+"):
            counted += 1
    lineno = None
    source = (folder / file).read_text()
    span = function_span(source, mutant)
    removed = [line[1:].strip() for line in changed if line.startswith("-")]
    if span and removed:
        lines = source.splitlines()
        same = [n for n in range(span[0], span[1] + 1) if lines[n - 1].strip() == removed[0]]
        guess = span[0] + (offset or 0)
        lineno = min(same, key=lambda n: abs(n - guess)) if same else None
    return lineno, changed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("groups", nargs="*", help="groups to report (default: every group with results)")
    parser.add_argument("--workdir", type=Path, default=REPO / "mutants")
    parser.add_argument(
        "--no-diff", action="store_true", help="list the surviving mutants without their diffs"
    )
    parser.add_argument("--markdown", action="store_true", help="the score table as Markdown (for docs/)")
    parser.add_argument("--json", type=Path, help="also write the counts and survivors to this file")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    names = args.groups or [n for n in GROUPS if (workdir / n / "mutants").is_dir()]
    if not names:
        print(f"No results in {workdir}: run `make mutation` first.")
        return 1

    rows: list[tuple[str, str, Counter[str]]] = []
    weak: list[tuple[str, str, str, str]] = []
    for name in names:
        group, folder = GROUPS[name], workdir / name
        for file in group.files:
            codes = load(folder, file, group.only)
            counts = Counter(status(c) for c in codes.values())
            rows.append((name, file, counts))
            weak += [(name, file, k, status(c)) for k, c in sorted(codes.items()) if status(c) in WEAK]

    def score(c: Counter[str]) -> tuple[int, int, str]:
        killed = c["killed"] + c["timeout"] + c["caught by type check"]
        judged = killed + c["survived"] + c["no tests"] + c["suspicious"] + c["segfault"]
        return killed, judged, f"{100 * killed / judged:.1f}%" if judged else "n/a"

    total: Counter[str] = Counter()
    head = ("group", "module", "killed", "survived", "no tests", "timeout", "not checked", "score")
    lines = []
    for name, file, c in rows:
        total += c
        killed, judged, pct = score(c)
        module = file + (" (_Secret, __repr__)" if GROUPS[name].only else "")
        row = (name, module, f"{killed}/{judged}", c["survived"], c["no tests"], c["timeout"])
        lines.append((*row, c["not checked"], pct))
    killed, judged, pct = score(total)
    summary = ("all", "", f"{killed}/{judged}", total["survived"], total["no tests"], total["timeout"])
    lines.append((*summary, total["not checked"], pct))

    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(str(x) for x in line) + " |")
    else:
        widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]
        for line in [head, *lines]:
            print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    if total["not checked"]:
        print(
            f"\nPARTIAL: {total['not checked']} mutants not checked yet (an interrupted or unfinished run)."
        )

    print(f"\nSurviving mutants ({len(weak)}; 'no tests' = no selected test reaches the function):")
    record = []
    for name, file, mutant, state in weak:
        lineno, changed = (None, []) if args.no_diff else describe(workdir / name, file, mutant)
        where = f"{file}:{lineno}" if lineno else file
        print(f"  [{state}] {where}  {mutant.rpartition('.')[2]}")
        for line in changed:
            print(f"      {line.strip()[:160]}")
        record.append({"group": name, "file": file, "line": lineno, "mutant": mutant, "status": state,
                       "diff": changed})  # fmt: skip
    if args.json:
        counts = {f"{n}:{f}": dict(c) for n, f, c in rows}
        args.json.write_text(json.dumps({"counts": counts, "weak": record}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
