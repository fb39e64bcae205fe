"""The ``kie-pipeline`` command (also ``python -m kie_pipeline.cli``).

Each subcommand is added by one ``_add_*`` function below; the function's subparser sets ``run``, the
function that carries the command out and returns the exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="kie-pipeline", description="Tools around the kie-pipeline Dagster integration."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


#: The functions that add one subcommand each (see the module docstring).
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = ()


if __name__ == "__main__":
    raise SystemExit(main())
