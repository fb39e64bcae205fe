"""Typed errors of the Kie API.

Kie reports errors either as an HTTP status or as HTTP 200 with a ``code`` in the JSON body; both
arrive here as the same exception class (see :func:`error_for_code`). Each message says what to do.
Messages never contain the API key: they are built from the response's ``code``/``msg`` only.
"""

from __future__ import annotations


class KieError(Exception):
    """Base class of every error raised by the Kie client."""

    #: Whether retrying the same request later may succeed.
    retryable: bool = False
    #: Advice appended to the message.
    hint: str = ""

    def __init__(self, message: str, *, code: int | None = None, msg: str | None = None) -> None:
        self.code = code
        self.msg = msg
        self.message = message
        full = f"{message} {self.hint}".strip() if self.hint else message
        super().__init__(full)


class KieBadRequestError(KieError):
    """400: the request was malformed."""

    hint = "The request was malformed; this is a bug in the caller, not something a retry fixes."


class KieAuthError(KieError):
    """401: the API key was refused."""

    hint = (
        "Check KIE_API_KEY: it must be a valid key from https://kie.ai/api-key "
        "(or point KIE_BASE_URL at the local emulator to run offline)."
    )


class KieInsufficientCreditsError(KieError):
    """402: the account has too few credits for this task."""

    def __init__(
        self, message: str, *, code: int | None = None, msg: str | None = None, balance: float | None = None
    ) -> None:
        self.balance = balance
        self.hint = "Top up credits at https://kie.ai before running again" + (
            f" (balance: {balance:g} credits)." if balance is not None else "."
        )
        super().__init__(message, code=code, msg=msg)

    def with_balance(self, balance: float | None) -> KieInsufficientCreditsError:
        """The same error, with the balance looked up after it."""
        return KieInsufficientCreditsError(self.message, code=self.code, msg=self.msg, balance=balance)


class KieNotFoundError(KieError):
    """404: the task or resource does not exist (or a result URL has expired)."""

    hint = "The task id or URL is unknown to Kie, or has expired."


class KieValidationError(KieError):
    """422 (or raised locally before any request): an input field is invalid."""

    def __init__(
        self, message: str, *, code: int | None = 422, msg: str | None = None, field: str | None = None
    ) -> None:
        self.field = field
        self.hint = f"Fix the field {field!r} of the request." if field else "Fix the request's input fields."
        super().__init__(message, code=code, msg=msg)


class KieRateLimitError(KieError):
    """429: too many requests; retried with backoff (honouring Retry-After)."""

    retryable = True
    hint = "Kie allows 20 new tasks per 10 s and 10 polls per second per account; lower the rate limits."

    def __init__(
        self,
        message: str,
        *,
        code: int | None = 429,
        msg: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, code=code, msg=msg)


class KieMaintenanceError(KieError):
    """455: the service is under maintenance; retried with backoff."""

    retryable = True
    hint = "Kie is under maintenance; try again later."


class KieServerError(KieError):
    """500 (and other 5xx): a server-side error; retried with backoff."""

    retryable = True
    hint = "Kie had an internal error; the request is retried with backoff."


class KieGenerationFailedError(KieError):
    """501: generation failed."""

    hint = "Kie could not generate this content; change the prompt or inputs and try again."


class KieFeatureDisabledError(KieError):
    """505: the feature or model is disabled for this account."""

    hint = "This feature is disabled on Kie for this account or model."


class KieUpstreamTimeoutError(KieError):
    """408: the upstream model gave no result in time (seen on some models)."""

    retryable = True
    hint = "The upstream model gave no result in time."


class KieProtocolError(KieError):
    """The response could not be understood (malformed JSON, missing fields)."""

    retryable = True
    hint = "The response from Kie was malformed."


class KieTransportError(KieError):
    """The connection failed or timed out."""

    retryable = True
    hint = "Check the network and KIE_BASE_URL."


class KieCoordinationError(KieError):
    """The coordination database (``KIE_COORDINATION_URL``: the account's shared rate windows, the
    batch leases) could not be reached or answered with an error.

    Nothing is sent to Kie without it: an unlimited request could make every machine's requests
    429. Retryable (the database may be restarting); the message names the database with its
    password masked, never the password itself.
    """

    retryable = True
    hint = "Check that the database of KIE_COORDINATION_URL is up and reachable from this machine."

    def __init__(self, message: str) -> None:
        super().__init__(message, code=None)


class KieCreateUncertainError(KieError):
    """createTask ended without a usable answer after the request may have reached Kie.

    Kie has no idempotency key, so a createTask that timed out while waiting for the answer, lost its
    connection after sending, or got an unreadable answer may still have created (and charged for)
    a task. The client never retries such a request; the caller decides what to do, e.g. look for
    the task by its callback or in Kie's dashboard, or accept the risk of paying twice.
    """

    retryable = False
    hint = (
        "Kie may have created the task (and charged for it): do not create it again blindly. "
        "Check for it first (callback, Kie's task log); create it again only if paying twice is acceptable."
    )

    def __init__(self, reason: str, *, endpoint: str = "createTask") -> None:
        #: What went wrong: the httpx error's name (``"ReadTimeout"``, ``"WriteError"``,
        #: ``"RemoteProtocolError"``, ...), ``"unreadable HTTP 200 answer"``, ``"non-numeric code ..."``,
        #: ``"success without a taskId"`` or ``"HTTP 504 from a gateway"``.
        self.reason = reason
        super().__init__(f"Kie {endpoint} ended without a usable answer ({reason}).", code=None)


class KieTaskTimeoutError(KieError):
    """``wait`` gave up before the task reached a terminal state; the task may still finish."""

    def __init__(self, task_id: str, timeout: float, last_state: str | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.last_state = last_state
        super().__init__(
            f"Task {task_id} did not finish within {timeout:g} s (last state: {last_state}). "
            "It may still complete: wait for it again later rather than creating a new task."
        )


class KieDownloadError(KieError):
    """A result file could not be downloaded (refused, too large, wrong type)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message, code=status)


_BY_CODE: dict[int, type[KieError]] = {
    400: KieBadRequestError,
    401: KieAuthError,
    402: KieInsufficientCreditsError,
    404: KieNotFoundError,
    408: KieUpstreamTimeoutError,
    422: KieValidationError,
    429: KieRateLimitError,
    455: KieMaintenanceError,
    500: KieServerError,
    501: KieGenerationFailedError,
    505: KieFeatureDisabledError,
}


def error_for_code(
    code: int, msg: str | None, *, endpoint: str, retry_after: float | None = None
) -> KieError:
    """Build the typed exception for a Kie error ``code`` (from the HTTP status or the body)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = KieServerError if code >= 500 else KieBadRequestError
    message = f"Kie {endpoint} failed with code {code}: {msg or 'no message'}."
    if cls is KieRateLimitError:
        return KieRateLimitError(message, code=code, msg=msg, retry_after=retry_after)
    if cls is KieValidationError:
        return KieValidationError(message, code=code, msg=msg, field=_field_from_msg(msg))
    return cls(message, code=code, msg=msg)


def _field_from_msg(msg: str | None) -> str | None:
    """Best effort: Kie's 422 messages usually name the field first (``"prompt: too long"``)."""
    if not msg:
        return None
    head = msg.split(":", 1)[0].strip()
    return head if head and " " not in head and len(head) < 64 else None
