"""The ``kie-pipeline`` command (also ``python -m kie_pipeline.cli``), built on click and rich.

Commands: ``expand`` writes a manifest from a template; ``validate`` and ``estimate`` read a manifest
(no key, no task, no credit); ``emulator``, ``receiver`` and ``demo`` run the local Kie emulator, the
callback receiver and the sample end to end.

Output that a command exists to give (tables, summaries) goes to stdout; errors, spinners and progress
bars go to stderr, and spinners and bars only when stderr is a terminal, so pipes, tests and CI logs
stay plain. Heavy modules (dagster, pandas, the pipeline) are imported inside the commands: ``--help``
stays fast. :func:`main` returns the exit status instead of exiting, for callers and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from kie_pipeline.pipeline.manifest import Problem

#: Exit statuses of ``validate`` (documented in its help).
VALID, INVALID, UNREADABLE = 0, 1, 2

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv`` without the program name; default ``sys.argv[1:]``); its exit status."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="kie-pipeline", standalone_mode=False
        )
    except click.ClickException as exc:  # usage errors: 2
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C or end of input
        click.echo("Aborted.", err=True)
        return 130
    return int(result or 0)


def _exit(code: int) -> NoReturn:
    """End the command with ``code`` (what :func:`main` and click's CliRunner both report)."""
    raise click.exceptions.Exit(code)


# -- output helpers ------------------------------------------------------------------------------------


def _stdout() -> Console:
    """A console on the current stdout. Not a terminal: no width limit, so a table never wraps and
    stays one line per row for grep, awk and tests; rich adds no colour there either."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, highlight=False, width=None if tty else 100_000, soft_wrap=not tty)


def _stderr_tty() -> Console | None:
    """A console on stderr when stderr is a terminal (for spinners and bars), else None."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def _spinner(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr (terminals only) while a step runs; yields a function to change its text."""
    console = _stderr_tty()
    if console is None:
        yield lambda _line: None
        return
    with console.status(message) as status:
        yield lambda line: status.update(line)


def _table(columns: Sequence[str], right: Sequence[str] = ()) -> Table:
    """A table without vertical rules: each row stays one line of cells split by spaces."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.HORIZONTALS, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


def _print_table(table: Table) -> None:
    """Print ``table`` on stdout; not on a terminal, without the cells' trailing padding."""
    console = _stdout()
    if sys.stdout.isatty():
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _cells(*values: object) -> list[Any]:
    """Table cells as plain text: a ``[`` in a prompt, id or message is never read as rich markup."""
    from rich.text import Text

    return [Text("" if v is None else str(v)) for v in values]


def _store_of(store: str | None) -> tuple[str, Any]:
    """The store's URL (``--store``, else KIE_STORE, else data/store) and its TaskStore."""
    from kie_pipeline.pipeline.store import TaskStore, parse_store_options

    url = store or os.environ.get("KIE_STORE", "data/store")
    return url, TaskStore(url, storage_options=parse_store_options(os.environ.get("KIE_STORE_OPTIONS", "")))


# -- the group -----------------------------------------------------------------------------------------


class _Group(click.Group):
    """Lists its commands in the order they are defined (the order of a workflow), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands' names, in definition order."""
        return list(self.commands)


def _limit_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--limit``: how many problems the table shows (``expand`` and ``validate``)."""
    return click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help=help)


@click.group(
    "kie-pipeline",
    cls=_Group,
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  kie-pipeline expand data/templates/animals.yaml -o data/animals.csv
  kie-pipeline validate data/prompts.csv
  kie-pipeline estimate data/prompts.csv --store data/store
  kie-pipeline emulator --port 8765 --latency 1,4
  KIE_CALLBACK_SECRET=... kie-pipeline receiver --port 8766
  kie-pipeline demo

Run 'kie-pipeline COMMAND --help' for a command's options.""",
)
@click.version_option(package_name="kie-pipeline", prog_name="kie-pipeline")
def cli() -> None:
    """Turn a manifest of prompts into a media dataset through the Kie.ai API.

    expand writes a manifest from a template of prompts; validate and estimate check a manifest and
    price it before any credit is spent (no key needed);
    emulator, receiver and demo run the local Kie emulator, the callback receiver and the sample end to
    end. The Dagster pipeline itself runs under dagster (see the README).
    """


# -- expand --------------------------------------------------------------------------------------------


@cli.command(
    short_help="Write a manifest from a template of prompts (YAML).",
    epilog="""\b
Examples:
  kie-pipeline expand data/templates/animals.yaml -o data/animals.csv
  kie-pipeline expand my-template.yaml -o prompts.parquet --max-rows 500000""",
)
@click.argument("template")
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help="The manifest to write: .csv, .parquet or .pq. [default: TEMPLATE with .csv]",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Refuse a template that expands to more rows.",
)
@_limit_option("Problems shown in the table (0: all).")
def expand(template: str, output: str | None, max_rows: int, limit: int) -> None:
    """Expand TEMPLATE (a YAML file) into a manifest: one row per combination of its slots' values.

    A row's id comes from its slot values and its split from its id and the split's seed: add a value
    to the template, expand again, and the existing rows keep their id, prompt and split (a rerun
    reuses them). The rows are checked as validate checks a manifest before anything is written; the
    output is replaced at once (a temporary file, then a rename). No key, no network.

    \b
    Exit status:
      0  written: one summary line (rows, slots, splits)
      1  the template (or a row it makes) is invalid: the table of problems; nothing is written
      2  the template cannot be read (no such file), or the output cannot be written
    """
    from kie_pipeline.pipeline.manifest import ManifestError
    from kie_pipeline.pipeline.templates import expand_template, load_template, summary, write_manifest_file

    if output is None:
        output = os.path.splitext(template)[0] + ".csv"
    if not output.lower().endswith((".csv", ".parquet", ".pq")):
        raise click.BadParameter(f"{output!r} must end in .csv, .parquet or .pq", param_hint="'-o'")
    try:
        with _spinner(f"Expanding {template}"):
            parsed = load_template(template, max_rows=max_rows)
            df = expand_template(parsed, base_dir=os.path.dirname(os.path.abspath(output)))
    except ManifestError as exc:
        problems = exc.problems
        if problems and all(p.row is None and p.field == "path" for p in problems):
            for p in problems:
                click.echo(f"kie-pipeline expand: {template}: {p.message}", err=True)
            _exit(UNREADABLE)
        _print_problems(template, problems, limit)
        _exit(INVALID)
    try:
        write_manifest_file(df, output)
    except OSError as exc:
        click.echo(f"kie-pipeline expand: {output}: cannot be written: {exc.strerror or exc}", err=True)
        _exit(UNREADABLE)
    click.echo(f"{template} → {output}: {summary(parsed, df)}.")


# -- validate ------------------------------------------------------------------------------------------


@cli.command(
    short_help="Check a manifest: a table of its problems, exit 1 on any.",
    epilog="""\b
Examples:
  kie-pipeline validate data/prompts.csv
  kie-pipeline validate s3://bucket/prompts.parquet --limit 0
  kie-pipeline validate data/prompts.csv --format json | jq '.problems[]'""",
)
@click.argument("manifest")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: to read; json: one object with the summary and every problem, to process.",
)
@_limit_option("Problems shown in the table (0: all). The json output always lists every one.")
def validate(manifest: str, output_format: str, limit: int) -> None:
    """Check every row of MANIFEST as the pipeline will, before anything is paid for.

    MANIFEST is a .csv, .tsv, .csv.gz or .parquet file, local or an fsspec URL (s3://...). Every
    problem is listed with its row (1-based data row), id and field; local image files are checked
    too. No API key, no network call to Kie, no credit.

    \b
    Exit status:
      0  valid: one summary line (rows, batches, models)
      1  invalid: the table of problems (an empty manifest is invalid: the pipeline refuses it)
      2  the manifest cannot be read (no such file, unknown extension)
    """
    from kie_pipeline.pipeline.manifest import ManifestError, load_manifest

    try:
        with _spinner(f"Validating {manifest}"):
            df = load_manifest(manifest)
    except ManifestError as exc:
        problems = exc.problems
        unreadable = bool(problems) and all(p.row is None and p.field == "path" for p in problems)
        if output_format == "json":
            click.echo(json.dumps(_validation_json(manifest, problems=problems), indent=2))
        elif unreadable:
            for p in problems:
                click.echo(f"kie-pipeline validate: {manifest}: {p.message}", err=True)
        else:
            _print_problems(manifest, problems, limit)
        _exit(UNREADABLE if unreadable else INVALID)
    batches = df["batch"].value_counts(sort=False).to_dict()
    models = df["model"].value_counts(sort=False).to_dict()
    if output_format == "json":
        click.echo(
            json.dumps(_validation_json(manifest, rows=len(df), batches=batches, models=models), indent=2)
        )
        return
    click.echo(
        f"{manifest} is valid: {len(df)} rows, {_counted(batches, 'batch', 'batches')}, "
        f"{_counted(models, 'model', 'models')}."
    )


def _counted(counts: dict[str, int], one: str, many: str, shown: int = 5) -> str:
    """``2 batches (animals 3, cities 2)``; the first ``shown`` names only when there are more."""
    names = ", ".join(f"{name} {n}" for name, n in list(counts.items())[:shown])
    more = f", +{len(counts) - shown} more" if len(counts) > shown else ""
    return f"{len(counts)} {one if len(counts) == 1 else many} ({names}{more})"


def _print_problems(manifest: str, problems: list[Problem], limit: int) -> None:
    """The table of problems on stdout and a count line; at most ``limit`` rows (0: all)."""
    table = _table(["row", "id", "field", "problem"], right=["row"])
    shown = problems if limit == 0 else problems[:limit]
    for p in shown:
        table.add_row(*_cells("-" if p.row is None else p.row, p.id, p.field, p.message))
    _print_table(table)
    rows = {p.row for p in problems if p.row is not None}
    line = f"{manifest} is invalid: {len(problems)} problem(s)"
    line += f" in {len(rows)} row(s)" if rows else ""
    if len(shown) < len(problems):
        line += f"; {len(problems) - len(shown)} more not shown (--limit 0 shows all)"
    click.echo(line + ".")


def _validation_json(
    manifest: str,
    *,
    problems: Sequence[Problem] = (),
    rows: int | None = None,
    batches: dict[str, int] | None = None,
    models: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``validate --format json``: valid, the counts (when valid) and every problem."""
    return {
        "manifest": manifest,
        "valid": not problems,
        "rows": rows,
        "batches": batches,
        "models": models,
        "problems": [{"row": p.row, "id": p.id, "field": p.field, "problem": p.message} for p in problems],
    }


# -- estimate ------------------------------------------------------------------------------------------


def _json_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None


@cli.command(
    short_help="What a manifest would create, reuse and cost (no key needed).",
    epilog="""\b
Examples:
  kie-pipeline estimate data/prompts.csv
  kie-pipeline estimate data/prompts.csv --store s3://bucket/store
  kie-pipeline estimate data/prompts.csv --prices '{"nano-banana-pro": {"*": 18}}'
  KIE_API_KEY=... kie-pipeline estimate data/prompts.csv --balance""",
)
@click.argument("manifest")
@click.option("--store", default=None, help="The store. [default: KIE_STORE, else data/store]")
@click.option(
    "--prices",
    callback=_json_option,
    default=None,
    metavar="JSON",
    help="Credits per task by model and price field, as GenerateConfig.prices.",
)
@click.option("--regenerate-expired", is_flag=True, help="Count expired rows as created (as the config).")
@click.option(
    "--balance",
    is_flag=True,
    help="Also read the account's balance (needs KIE_API_KEY; KIE_BASE_URL for the emulator).",
)
def estimate(manifest: str, store: str | None, prices: Any, regenerate_expired: bool, balance: bool) -> None:
    """What materializing MANIFEST would create, reuse and cost.

    Counts, per batch and model, the rows a materialization would create (new createTask calls),
    reuse and resume, from the store's task records, and estimates the credits of those created from
    the price table. No task is created and no key is needed (except for --balance).

    \b
    Exit status: 0; 2 when the manifest is invalid (its problems on stderr).
    """
    from kie_pipeline.client import DEFAULT_BASE_URL, KieError
    from kie_pipeline.estimate import estimate_manifest, estimate_notes, estimate_rows, read_balance
    from kie_pipeline.pipeline.manifest import ManifestError

    # Read when the command runs (never at import), like the Dagster definitions.
    store_url, task_store = _store_of(store)
    try:
        with _spinner(f"Reading {manifest}") as step:
            needs = estimate_manifest(
                manifest, task_store, prices=prices, regenerate_expired=regenerate_expired, on_step=step
            )
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        _exit(2)
    credits = None
    if balance:
        key = os.environ.get("KIE_API_KEY")
        if not key:
            click.echo("KIE_API_KEY is not set: the balance is not shown.", err=True)
        else:
            try:
                with _spinner("Reading the balance"):
                    credits = read_balance(key, os.environ.get("KIE_BASE_URL") or DEFAULT_BASE_URL)
            except KieError as exc:
                click.echo(f"Could not read the balance: {exc}", err=True)
    header, body, total = estimate_rows(needs)
    table = _table(header, right=header[2:])
    for i, row in enumerate(body):
        table.add_row(*_cells(*row), end_section=i == len(body) - 1)
    table.add_row(*_cells(*total), style="bold")
    click.echo(f"Estimate for {manifest} against the store {store_url} (no task was created):")
    _print_table(table)
    for line in estimate_notes(needs, credits):
        click.echo(line)


# -- emulator ------------------------------------------------------------------------------------------


def _click_options(parser: argparse.ArgumentParser) -> list[click.Option]:
    """click options for every option of an argparse ``parser`` (same names, defaults, help)."""
    params: list[click.Option] = []
    # argparse has no public list of its options; _actions has been stable since Python 3.2.
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        settings: dict[str, Any] = {"help": action.help, "show_default": action.default not in (None, False)}
        if isinstance(action, argparse._StoreTrueAction):
            settings.update(is_flag=True, default=False)
        else:
            kind = click.Choice(list(action.choices)) if action.choices else action.type or str
            settings.update(type=kind, default=action.default, metavar=action.metavar)
        params.append(click.Option([*action.option_strings, action.dest], **settings))
    return params


class _EmulatorCommand(click.Command):
    """The emulator's options are defined once, by ``kie_pipeline.emulator.__main__.build_parser``
    (``python -m kie_pipeline.emulator`` uses it); this command offers the same ones, read from that
    parser only when the command runs or shows its help (importing the emulator takes ~0.7 s)."""

    _loaded = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        """The emulator's options, then click's own (--help)."""
        if not self._loaded:
            from kie_pipeline.emulator.__main__ import build_parser

            self.params[:0] = _click_options(build_parser())
            self._loaded = True
        return super().get_params(ctx)


@cli.command(
    short_help="Serve the local Kie emulator (for tests and demos).",
    cls=_EmulatorCommand,
    epilog="""\b
Examples:
  kie-pipeline emulator                         # http://127.0.0.1:8765, key emulator-key
  kie-pipeline emulator --port 8765 --latency 2,6
  kie-pipeline emulator --fault-500 0.1 --fault-429 0.05   # a flaky Kie
Then point the pipeline at it:
  KIE_BASE_URL=http://127.0.0.1:8765 KIE_API_KEY=emulator-key KIE_UPLOAD_URL=http://127.0.0.1:8765""",
)
def emulator(**options: Any) -> None:
    """Serve the local Kie emulator (the same as python -m kie_pipeline.emulator).

    An emulator of the Kie.ai API (createTask, recordInfo, credit, file uploads and downloads,
    callbacks) for tests and demos, with rate limits, latency and injected faults. Prompts containing
    the fail marker fail; prompts containing the stuck marker never finish. Runs until Ctrl-C.
    """
    from kie_pipeline.emulator.__main__ import config_from_namespace
    from kie_pipeline.emulator.server import serve

    try:
        config = config_from_namespace(argparse.Namespace(**options))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    host, port = options["host"], options["port"]
    click.echo(f"Kie emulator on http://{host}:{port} (key {config.api_key!r}, balance {options['balance']})")
    sys.stdout.flush()
    serve(config, host, port)


# -- receiver ------------------------------------------------------------------------------------------


@cli.command(
    short_help="Serve the callback receiver (Kie's callbacks into the store).",
    epilog="""\b
Examples:
  KIE_CALLBACK_SECRET=$(openssl rand -hex 32) kie-pipeline receiver --port 8766
  kie-pipeline receiver --host 0.0.0.0 --store s3://bucket/store   # behind a TLS proxy""",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=int, default=8766, show_default=True, help="Port to bind.")
@click.option("--store", default=None, help="The store. [default: KIE_STORE, else data/store]")
def receiver(host: str, port: int, store: str | None) -> None:
    """Serve the callback receiver: Kie's callbacks into the store's task records.

    The secret comes from KIE_CALLBACK_SECRET (required; the same value as the pipeline's) and Kie's
    webhook HMAC key, if the account has one, from KIE_WEBHOOK_KEY; both are read when it starts.
    KIE_STORE_OPTIONS holds the store's fsspec options. Runs until Ctrl-C.

    \b
    Exit status: 2 when KIE_CALLBACK_SECRET is not set.
    """
    secret = os.environ.get("KIE_CALLBACK_SECRET", "")
    if not secret:
        click.echo(
            "KIE_CALLBACK_SECRET is not set: set it to a long random value, the same for the pipeline."
        )
        _exit(2)
    from kie_pipeline.receiver import serve

    store_url, task_store = _store_of(store)
    click.echo(f"Callback receiver on http://{host}:{port}, writing to {store_url}")
    sys.stdout.flush()
    serve(
        task_store, secret=secret, webhook_key=os.environ.get("KIE_WEBHOOK_KEY") or None, host=host, port=port
    )


# -- demo ----------------------------------------------------------------------------------------------


def _latency(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"MIN,MAX seconds (e.g. 0.5,2.5), not {value!r}") from None
    if not 0 <= lo <= hi:
        raise click.BadParameter(f"needs 0 <= MIN <= MAX, not {value!r}")
    return lo, hi


@cli.command(
    short_help="Run a manifest end to end against a local emulator.",
    epilog="""\b
Examples:
  kie-pipeline demo                                  # the sample, data/prompts.csv
  kie-pipeline demo --manifest my.csv --store /tmp/demo-store --latency 0,0.5
Run it twice: the second run reuses every result and creates no task.""",
)
@click.option(
    "--manifest",
    envvar="KIE_MANIFEST",
    show_envvar=True,
    default="data/prompts.csv",
    show_default=True,
    help="The manifest to generate.",
)
@click.option(
    "--store",
    envvar="KIE_STORE",
    show_envvar=True,
    default="data/store",
    show_default=True,
    help="Where results, task records and the catalog go.",
)
@click.option(
    "--dagster-home",
    envvar="DAGSTER_HOME",
    show_envvar=True,
    default=".dagster_home",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The Dagster instance's folder (created if missing).",
)
@click.option(
    "--latency",
    default="0.5,2.5",
    show_default=True,
    callback=_latency,
    metavar="MIN,MAX",
    help="Seconds the emulator takes per task.",
)
def demo(manifest: str, store: str, dagster_home: str, latency: tuple[float, float]) -> None:
    """Run a manifest end to end against a local emulator (no key, no credit).

    Starts the emulator and a callback receiver on loopback ports, materializes prompt_manifest,
    every batch of generated_images and image_catalog on a persistent Dagster instance, then prints
    the catalog. A progress bar (on a terminal) counts the rows settled while batches generate.
    KIE_BASE_URL and KIE_API_KEY from the shell are ignored: the demo always runs offline.

    \b
    Exit status: 0 when every row succeeded, else 1.
    """
    if not os.path.exists(os.path.join(dagster_home, "dagster.yaml")):
        # Dagster's own advice for a folder meant for local metadata (else it warns on every run).
        os.makedirs(dagster_home, exist_ok=True)
        with open(os.path.join(dagster_home, "dagster.yaml"), "x") as fh:
            fh.write("# Created by kie-pipeline demo: a local instance, all metadata in this folder.\n")
    os.environ.update(KIE_MANIFEST=manifest, KIE_STORE=store, DAGSTER_HOME=os.path.abspath(dagster_home))
    console = _stderr_tty()
    with _demo_progress(console) as progress:
        from kie_pipeline import demo as run

        code = run.main(latency=latency, progress=progress)
    _exit(code)


@contextlib.contextmanager
def _demo_progress(console: Console | None) -> Iterator[Callable[[int, int], None] | None]:
    """A bar of rows settled of the manifest's rows, on ``console`` (None: no bar, no callback).

    The bar appears at the first report, when the batches start generating (not while Dagster loads).
    """
    if console is None:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("rows settled"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # While it shows, the demo's own lines (stdout) and Dagster's warnings (stderr) print above it.
    bar = Progress(*columns, console=console)
    task = bar.add_task("rows", total=None, start=False)

    def report(settled: int, total: int) -> None:
        bar.update(task, completed=settled, total=total)
        if not bar.live.is_started:
            bar.start_task(task)
            bar.start()

    try:
        yield report
    finally:
        bar.stop()


if __name__ == "__main__":
    raise SystemExit(main())
