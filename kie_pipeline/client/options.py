"""The client's tunable policies as value objects, with their defaults written once.

:class:`AsyncKieClient`, :class:`KieClient`, ``KieResource`` (which nests them in its config) and the
emulator's defaults all take these; each default is Kie's documented value or advice.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimits(_Options):
    """At most ``create_limit`` createTask calls in any window of ``create_period_s`` seconds, and
    ``poll_limit`` status calls per ``poll_period_s`` (Kie: 20 per 10 s per account, 10 per s).
    On several machines, give each one its share (``create_limit = 20 // machines``)."""

    create_limit: int = Field(default=20, ge=1, description="createTask calls allowed per create_period_s.")
    create_period_s: float = Field(default=10.0, gt=0, description="Window of the createTask limit (s).")
    poll_limit: int = Field(default=10, ge=1, description="Status calls allowed per poll_period_s.")
    poll_period_s: float = Field(default=1.0, gt=0, description="Window of the status-call limit (s).")


class RetryPolicy(_Options):
    """Retries of retryable failures (429, 5xx, timeouts, drops): exponential backoff with jitter, or
    exactly the server's ``Retry-After``. A createTask that Kie may have run is never retried."""

    max_attempts: int = Field(default=8, ge=1, description="Attempts per request, the first included.")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="First retry backoff (s).")
    backoff_max_s: float = Field(default=60.0, ge=0, description="Longest retry backoff (s).")


class PollPolicy(_Options):
    """Waiting by polling: first poll after ``initial_s``, then the interval grows by ``backoff`` up
    to ``max_s``; give up after ``timeout_s`` (Kie advises 2-3 s first, then 15-30 s; tasks finish
    within 10-15 min). A batch's waiter then learns from its finished tasks when to poll the next
    ones of the same model (``kie_pipeline.client.durations``), never with more polls per task
    than this schedule would make on those durations."""

    initial_s: float = Field(default=2.5, ge=0, description="First poll after this many seconds.")
    max_s: float = Field(default=30.0, ge=0, description="Polls back off up to this interval (s).")
    backoff: float = Field(default=1.5, ge=1, description="Factor by which the interval grows.")
    timeout_s: float = Field(default=900.0, gt=0, description="Give up waiting on a task after this long.")
    callback_fallback_s: float = Field(
        default=60.0,
        gt=0,
        description="With callbacks on: recordInfo is asked only this often, in case a callback is lost.",
    )
