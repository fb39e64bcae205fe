"""The Kie.ai API client layer. It has no Dagster imports: use it from any orchestrator or script."""

from .client import DEFAULT_BASE_URL, AsyncKieClient
from .durations import DurationEstimate, DurationEstimates, PollSchedule, task_duration
from .errors import (
    KieAuthError,
    KieBadRequestError,
    KieCoordinationError,
    KieCreateUncertainError,
    KieDownloadError,
    KieError,
    KieFeatureDisabledError,
    KieGenerationFailedError,
    KieInsufficientCreditsError,
    KieMaintenanceError,
    KieNotFoundError,
    KieProtocolError,
    KieRateLimitError,
    KieServerError,
    KieTaskTimeoutError,
    KieTransportError,
    KieUpstreamTimeoutError,
    KieValidationError,
)
from .models import DownloadResult, KieUsage, TaskRecord, TaskState, UploadedFile
from .options import PollPolicy, RateLimits, RetryPolicy
from .pricing import PRICES, estimate_credits
from .ratelimit import SlidingWindowLimiter
from .registry import DEFAULT_MODEL, MODELS, MediaType, ModelSpec, get_model, validate_input
from .sync import KieClient
from .upload import DEFAULT_UPLOAD_URL
from .waiting import PollingWaiter, Waiter

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_UPLOAD_URL",
    "MODELS",
    "PRICES",
    "AsyncKieClient",
    "DownloadResult",
    "DurationEstimate",
    "DurationEstimates",
    "KieAuthError",
    "KieBadRequestError",
    "KieClient",
    "KieCoordinationError",
    "KieCreateUncertainError",
    "KieDownloadError",
    "KieError",
    "KieFeatureDisabledError",
    "KieGenerationFailedError",
    "KieInsufficientCreditsError",
    "KieMaintenanceError",
    "KieNotFoundError",
    "KieProtocolError",
    "KieRateLimitError",
    "KieServerError",
    "KieTaskTimeoutError",
    "KieTransportError",
    "KieUpstreamTimeoutError",
    "KieUsage",
    "KieValidationError",
    "MediaType",
    "ModelSpec",
    "PollPolicy",
    "PollSchedule",
    "PollingWaiter",
    "RateLimits",
    "RetryPolicy",
    "SlidingWindowLimiter",
    "TaskRecord",
    "TaskState",
    "UploadedFile",
    "Waiter",
    "estimate_credits",
    "get_model",
    "task_duration",
    "validate_input",
]
