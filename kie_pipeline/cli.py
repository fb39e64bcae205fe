"""The ``kie-pipeline`` command (also ``python -m kie_pipeline.cli``).

Each subcommand is added by one ``_add_*`` function below; the function's subparser sets ``run``, the
function that carries the command out and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def _add_receiver(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "receiver",
        help="serve the callback receiver (Kie's callbacks into the store's task records)",
        description="Serve the callback receiver. The secret comes from KIE_CALLBACK_SECRET and Kie's "
        "webhook HMAC key, if the account has one, from KIE_WEBHOOK_KEY (read when it starts).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--store", default=None, help="the store (default: KIE_STORE, else data/store)")
    p.set_defaults(run=_run_receiver)


def _run_receiver(args: argparse.Namespace) -> int:
    import os

    from kie_pipeline.pipeline.store import TaskStore, parse_store_options
    from kie_pipeline.receiver import serve

    secret = os.environ.get("KIE_CALLBACK_SECRET", "")
    if not secret:
        print("KIE_CALLBACK_SECRET is not set: set it to a long random value, the same for the pipeline.")
        return 2
    store = args.store or os.environ.get("KIE_STORE", "data/store")
    options = parse_store_options(os.environ.get("KIE_STORE_OPTIONS", ""))
    print(f"Callback receiver on http://{args.host}:{args.port}, writing to {store}", flush=True)
    serve(
        TaskStore(store, storage_options=options),
        secret=secret,
        webhook_key=os.environ.get("KIE_WEBHOOK_KEY") or None,
        host=args.host,
        port=args.port,
    )
    return 0


def _add_estimate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate",
        help="what a manifest would create, reuse and cost (no task is created, no key needed)",
        description="Count, per batch and model, the rows a materialization would create (new "
        "createTask calls), reuse and resume, and estimate the credits of those created, from the "
        "store's task records and the price table. Exit 0; 2 when the manifest is invalid.",
    )
    p.add_argument("manifest", help="the manifest (.csv, .tsv, .csv.gz or .parquet)")
    p.add_argument("--store", default=None, help="the store (default: KIE_STORE, else data/store)")
    p.add_argument(
        "--prices",
        type=json.loads,
        default=None,
        help="JSON of credits per task by model and price field, as GenerateConfig.prices",
    )
    p.add_argument(
        "--regenerate-expired", action="store_true", help="count expired rows as created (as the config)"
    )
    p.add_argument(
        "--balance",
        action="store_true",
        help="also read the account's balance (needs KIE_API_KEY; KIE_BASE_URL for the emulator)",
    )
    p.set_defaults(run=_run_estimate)


def _run_estimate(args: argparse.Namespace) -> int:
    from kie_pipeline.client import DEFAULT_BASE_URL, KieError
    from kie_pipeline.estimate import estimate_manifest, format_estimate, read_balance
    from kie_pipeline.pipeline.manifest import ManifestError
    from kie_pipeline.pipeline.store import TaskStore, parse_store_options

    # Read when the command runs (never at import), like the Dagster definitions.
    store_url = args.store or os.environ.get("KIE_STORE", "data/store")
    store = TaskStore(store_url, storage_options=parse_store_options(os.environ.get("KIE_STORE_OPTIONS", "")))
    try:
        needs = estimate_manifest(
            args.manifest, store, prices=args.prices, regenerate_expired=args.regenerate_expired
        )
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    balance = None
    if args.balance:
        key = os.environ.get("KIE_API_KEY")
        if not key:
            print("KIE_API_KEY is not set: the balance is not shown.", file=sys.stderr)
        else:
            try:
                balance = read_balance(key, os.environ.get("KIE_BASE_URL") or DEFAULT_BASE_URL)
            except KieError as exc:
                print(f"Could not read the balance: {exc}", file=sys.stderr)
    print(f"Estimate for {args.manifest} against the store {store_url} (no task was created):")
    print(format_estimate(needs, balance))
    return 0


#: The functions that add one subcommand each (see the module docstring).
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_receiver, _add_estimate)


if __name__ == "__main__":
    raise SystemExit(main())
