"""The Kie.ai API client layer. It has no Dagster imports: use it from any orchestrator or script."""

from .client import DEFAULT_BASE_URL, AsyncKieClient
from .errors import (
    KieAuthError,
    KieBadRequestError,
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
from .models import DownloadResult, KieUsage, TaskRecord, TaskState
from .pricing import PRICES, estimate_credits
from .ratelimit import SlidingWindowLimiter
from .sync import KieClient
from .validation import NANO_BANANA_PRO, validate_input

__all__ = [
    "DEFAULT_BASE_URL",
    "NANO_BANANA_PRO",
    "PRICES",
    "AsyncKieClient",
    "DownloadResult",
    "KieAuthError",
    "KieBadRequestError",
    "KieClient",
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
    "SlidingWindowLimiter",
    "TaskRecord",
    "TaskState",
    "estimate_credits",
    "validate_input",
]
