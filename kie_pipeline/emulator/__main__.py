"""``python -m kie_pipeline.emulator --port 8765``: run the local Kie emulator."""

from __future__ import annotations

import argparse

from .config import FAIL_MARKER, RETENTION_SECONDS, STUCK_MARKER, EmulatorConfig, Faults
from .server import serve


def build_parser() -> argparse.ArgumentParser:
    """The command line of the emulator."""
    p = argparse.ArgumentParser(
        prog="python -m kie_pipeline.emulator",
        description=f"A local emulator of the Kie.ai jobs API. Prompts with {FAIL_MARKER!r} fail; "
        f"prompts with {STUCK_MARKER!r} never finish.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port to bind")
    p.add_argument("--api-key", default="emulator-key", help="the Bearer key it accepts")
    p.add_argument("--balance", type=int, default=1_000_000, help="credits on the account")
    p.add_argument("--cost", type=int, default=18, help="credits per image (1K/2K)")
    p.add_argument("--latency", default="1,4", help="MIN,MAX seconds a task takes (uniform)")
    p.add_argument("--create-limit", type=int, default=20, help="createTask calls per --create-period")
    p.add_argument("--create-period", type=float, default=10.0, help="seconds of the --create-limit window")
    p.add_argument("--poll-limit", type=int, default=10, help="recordInfo calls per second")
    p.add_argument("--render-scale", type=float, default=1.0, help="1.0: 1K images are 1024 px")
    p.add_argument("--result-url-ttl", type=float, default=24 * 3600.0, help="seconds before result URLs 404")
    p.add_argument(
        "--retention",
        type=float,
        default=RETENTION_SECONDS,
        help="seconds after completion until a task's files 404 and download-url refuses them (Kie: 14 days)",
    )
    p.add_argument("--results-per-task", type=int, default=1, help="result URLs per successful task")
    p.add_argument(
        "--credits-in-record",
        action="store_true",
        help="put consumeCredits/remainedCredits in recordInfo too",
    )
    p.add_argument("--chunked-files", action="store_true", help="send result files without Content-Length")
    p.add_argument(
        "--error-style",
        choices=("http", "body"),
        default="http",
        help="http: errors as HTTP statuses; body: HTTP 200 with the error in the body's code",
    )
    p.add_argument("--fault-500", type=float, default=0.0, help="fraction of requests answered 500")
    p.add_argument("--fault-429", type=float, default=0.0, help="fraction of requests answered 429")
    p.add_argument(
        "--fault-drop",
        type=float,
        default=0.0,
        help="fraction of requests whose connection is closed unanswered",
    )
    p.add_argument(
        "--fault-malformed", type=float, default=0.0, help="fraction of requests answered with malformed JSON"
    )
    p.add_argument(
        "--fault-slow", type=float, default=0.0, help="fraction of requests handled after --slow-seconds"
    )
    p.add_argument("--slow-seconds", type=float, default=30.0, help="delay of a slow request")
    p.add_argument(
        "--fault-lost-answer",
        type=float,
        default=0.0,
        help="fraction of createTask requests whose task is created and charged, then the answer lost",
    )
    p.add_argument(
        "--lost-answer-mode",
        choices=("drop", "hold"),
        default="drop",
        help="drop: hang up without answering; hold: answer after --slow-seconds",
    )
    p.add_argument(
        "--lost-answer-count", type=int, default=0, help="the next N created tasks lose their answer"
    )
    p.add_argument("--webhook-key", default=None, help="sign callbacks with this webhook HMAC key")
    p.add_argument(
        "--callback-delay", type=float, default=0.0, help="seconds from a task's end to its callback"
    )
    p.add_argument("--fault-callback-lost", type=float, default=0.0, help="fraction of callbacks never sent")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, EmulatorConfig]:
    """The parsed command line and the emulator settings it describes."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        config = config_from_namespace(a)
    except ValueError as exc:
        parser.error(str(exc))
    return a, config


def config_from_namespace(a: argparse.Namespace) -> EmulatorConfig:
    """The emulator settings of parsed options (one attribute per option of :func:`build_parser`).

    ``kie-pipeline emulator`` parses the same options with click and calls this too.

    Raises:
        ValueError: naming the option, when a value is out of range.
    """
    if a.results_per_task < 1:
        raise ValueError("--results-per-task must be at least 1")
    try:
        lo, hi = (float(x) for x in a.latency.split(","))
    except ValueError:
        raise ValueError(f"--latency must be MIN,MAX seconds (e.g. 1,4), not {a.latency!r}") from None
    return EmulatorConfig(
        api_key=a.api_key,
        balance=a.balance,
        cost_per_image=a.cost,
        latency=(lo, hi),
        create_limit=a.create_limit,
        create_period=a.create_period,
        poll_limit=a.poll_limit,
        render_scale=a.render_scale,
        result_url_ttl=a.result_url_ttl,
        retention=a.retention,
        results_per_task=a.results_per_task,
        credits_in_record=a.credits_in_record,
        chunked_files=a.chunked_files,
        error_style=a.error_style,
        webhook_key=a.webhook_key,
        callback_delay=a.callback_delay,
        faults=Faults(
            error_500=a.fault_500,
            error_429=a.fault_429,
            drop=a.fault_drop,
            malformed=a.fault_malformed,
            slow=a.fault_slow,
            slow_seconds=a.slow_seconds,
            lost_answer=a.fault_lost_answer,
            lost_answer_mode=a.lost_answer_mode,
            lost_answer_count=a.lost_answer_count,
            callback_lost=a.fault_callback_lost,
        ),
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the emulator in the foreground."""
    a, config = config_from_args(argv)
    print(f"Kie emulator on http://{a.host}:{a.port} (key {a.api_key!r}, balance {a.balance})", flush=True)
    serve(config, a.host, a.port)


if __name__ == "__main__":
    main()
