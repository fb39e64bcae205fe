"""Settings of the Kie emulator: account, limits, latency, rendering and fault injection."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from kie_pipeline.client.options import RateLimits
from kie_pipeline.client.upload import UPLOAD_RETENTION_S

#: A prompt containing this marker makes the task end in ``fail`` (failCode 501).
FAIL_MARKER = "#kie-fail"
#: A prompt containing this marker keeps the task in ``generating`` forever (for timeout tests).
STUCK_MARKER = "#kie-stuck"
#: How long Kie keeps generated media after a task completes (its getting-started page: 14 days).
RETENTION_SECONDS = 14 * 24 * 3600.0


@dataclass
class Faults:
    """Fractions of API requests that misbehave, each drawn independently (seeded).

    ``error_500``, ``error_429``, ``drop``, ``malformed`` and ``force_code`` strike before the request
    is handled, so a faulted createTask creates nothing. ``slow`` delays the request, then handles it
    even if the client has given up meanwhile. ``lost_answer*`` strike after: the task is created and
    charged, then its answer is lost.
    """

    error_500: float = 0.0
    error_429: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 30.0
    seed: int = 0
    #: Answer the next ``force_count`` API requests with this error code (any documented code).
    force_code: int | None = None
    force_count: int = 0
    #: Fraction of createTask requests whose task IS created and charged and whose answer is lost.
    lost_answer: float = 0.0
    #: "drop": close the connection without any response; "hold": answer after ``slow_seconds``
    #: (so that a client's read timeout fires first).
    lost_answer_mode: Literal["drop", "hold"] = "drop"
    #: The next ``lost_answer_count`` createTask requests that create a task lose their answer.
    lost_answer_count: int = 0
    #: Fraction of tasks whose callback is never sent (the receiver must not be the only way to end).
    callback_lost: float = 0.0
    #: Extra deliveries of each callback (Kie: "the same taskId can arrive more than once").
    callback_duplicates: int = 0
    #: Sign callbacks with a wrong key (the receiver must refuse them).
    callback_bad_signature: bool = False


_KIE_LIMITS = RateLimits()


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told; all of it can be changed at run time (``/emulator/config``)."""

    api_key: str = "emulator-key"
    balance: int = 1_000_000
    cost_per_image: int = 18
    cost_per_image_4k: int = 24
    # Kie's documented limits: the same defaults as the client's (one place: client/options.py).
    create_limit: int = _KIE_LIMITS.create_limit
    create_period: float = _KIE_LIMITS.create_period_s
    poll_limit: int = _KIE_LIMITS.poll_limit
    poll_period: float = _KIE_LIMITS.poll_period_s
    #: Uniform range (seconds) of a task's total time from creation to success/fail.
    latency: tuple[float, float] = (0.0, 0.0)
    #: Seconds a result URL stays valid after completion (Kie: 20 min to 14 days); then 404.
    result_url_ttl: float = 24 * 3600.0
    #: Seconds a link from download-url stays valid (Kie: 20 minutes).
    download_url_ttl: float = 1200.0
    #: Scales rendered images (1.0: 1K is 1024 px on the long side; tests use e.g. 0.0625).
    render_scale: float = 1.0
    #: Render like a model with a fixed seed: the same prompt (and size) gives the same image, with no
    #: task label (tests plant real near-duplicates this way). Off: each task's image is its own.
    same_prompt_same_image: bool = False
    #: "http": errors as HTTP statuses; "body": HTTP 200 with the error in the body's ``code``.
    error_style: Literal["http", "body"] = "http"
    #: URLs in a successful task's ``resultUrls`` (Kie: "a task can return several"), each a distinct image.
    results_per_task: int = 1
    #: Seconds after completion that Kie keeps a task's files; then files 404 and download-url refuses.
    retention: float = RETENTION_SECONDS
    #: Also put ``consumeCredits``/``remainedCredits`` in recordInfo (callbacks always carry them).
    credits_in_record: bool = False
    #: Serve result files as a stream without Content-Length (chunked), to exercise streaming caps.
    chunked_files: bool = False
    #: The account's webhook HMAC key: callbacks then carry X-Webhook-Timestamp / X-Webhook-Signature.
    webhook_key: str | None = None
    #: Seconds between a task's end and its callback.
    callback_delay: float = 0.0
    #: Seconds an uploaded file is served after its upload (Kie deletes uploads after 3 days).
    upload_retention: float = UPLOAD_RETENTION_S
    #: The key of the uploaded file's URL in upload answers: "downloadUrl" (Kie's endpoint pages) or
    #: "fileUrl" (Kie's quickstart).
    upload_url_field: Literal["downloadUrl", "fileUrl"] = "downloadUrl"
    faults: Faults = field(default_factory=Faults)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a (JSON) dict of changes; ``faults`` may be a partial dict."""
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown emulator setting {key!r}")
            if key == "faults":
                for fk, fv in value.items():
                    if not hasattr(self.faults, fk):
                        raise ValueError(f"unknown fault {fk!r}")
                    if fk == "lost_answer_mode" and fv not in ("drop", "hold"):
                        raise ValueError(f"lost_answer_mode must be 'drop' or 'hold', not {fv!r}")
                    setattr(self.faults, fk, fv)
            elif key == "latency":
                lo, hi = value
                self.latency = (float(lo), float(hi))
            elif key == "results_per_task" and (not isinstance(value, int) or value < 1):
                raise ValueError("results_per_task must be an integer >= 1")
            else:
                setattr(self, key, value)
