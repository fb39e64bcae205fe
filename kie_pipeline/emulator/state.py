"""The emulator's account and task store. Task states advance with time, computed when read."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from kie_pipeline.client.registry import MODELS, Output

from .config import FAIL_MARKER, STUCK_MARKER, EmulatorConfig
from .uploads import UploadStore


@dataclass
class Task:
    task_id: str
    model: str
    request: dict[str, Any]
    created_ms: int
    created_mono: float
    duration: float
    fail: bool
    stuck: bool
    #: Credits charged at creation (reported as consumeCredits).
    cost: int = 0
    #: How many result URLs the task returns (fixed at creation).
    results: int = 1
    #: What the task returns (size, format, count), from the model registry.
    output: Output = field(default_factory=lambda: Output("1:1", "1K", "png"))
    result_tokens: list[str] | None = None
    callback_sent: bool = False
    #: The API family that created the task (``registry.FAMILIES``) and, for families with flat
    #: bodies, the body as sent (their records echo it as ``paramJson``).
    family: str = "jobs"
    body: dict[str, Any] | None = None

    @property
    def input(self) -> dict[str, Any]:
        return self.request.get("input") or {}

    def state_at(self, now: float) -> str:
        """waiting → queuing → generating → success/fail over the task's duration."""
        elapsed = now - self.created_mono
        if self.stuck:
            return "generating" if elapsed >= 0.2 * self.duration else "waiting"
        if elapsed >= self.duration:
            return "fail" if self.fail else "success"
        if elapsed >= 0.3 * self.duration:
            return "generating"
        if elapsed >= 0.1 * self.duration:
            return "queuing"
        return "waiting"

    def completed_at(self) -> float:
        return self.created_mono + self.duration

    def expired(self, now: float, retention: float) -> bool:
        """Whether Kie would have deleted this task's files (``retention`` s after completion)."""
        return now > self.completed_at() + retention


@dataclass
class FileToken:
    task_id: str
    index: int
    expires_mono: float


@dataclass
class Stats:
    created: int = 0
    create_requests: int = 0
    polls: int = 0
    rate_limited: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    downloads: int = 0
    downloads_with_auth: int = 0
    unauthorized: int = 0
    download_url_calls: int = 0
    credits_spent: int = 0
    #: Most tasks created (accepted createTask calls) in any window of create_period.
    max_creates_in_window: int = 0
    #: Most createTask requests that arrived (past auth, before the 429 check) in any such window:
    #: the figure that shows whether a client kept to the limit.
    max_create_arrivals_in_window: int = 0


class Emulator:
    """In-memory account: balance, rate windows, tasks and file tokens (thread-safe)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.tasks: dict[str, Task] = {}
        self.tokens: dict[str, FileToken] = {}
        self.uploads = UploadStore()
        self.stats = Stats()
        self.lock = threading.Lock()
        self._creates: deque[float] = deque()
        self._arrivals: deque[float] = deque()
        #: Wall-clock time of every createTask arrival, for benchmarks that measure how fully clients
        #: used the limit (GET /emulator/arrivals); a float per call, a few MB for 10^5 calls.
        self.create_arrival_times: list[float] = []
        self._polls: deque[float] = deque()
        self._rng = random.Random(self.config.faults.seed)
        self._fault_rng = random.Random(self.config.faults.seed)

    # -- rate limits -------------------------------------------------------------------------
    @staticmethod
    def _window_check(stamps: deque[float], limit: int, period: float, now: float) -> float | None:
        """None if one more fits in the window (and records it), else seconds until one does."""
        while stamps and now - stamps[0] >= period:
            stamps.popleft()
        if len(stamps) >= limit:
            return period - (now - stamps[0])
        stamps.append(now)
        return None

    def arrive_create(self) -> None:
        """Count a createTask request at arrival (after auth, before the rate limit is applied)."""
        with self.lock:
            now = time.monotonic()
            period = self.config.create_period
            while self._arrivals and now - self._arrivals[0] >= period:
                self._arrivals.popleft()
            self._arrivals.append(now)
            self.create_arrival_times.append(time.time())
            self.stats.max_create_arrivals_in_window = max(
                self.stats.max_create_arrivals_in_window, len(self._arrivals)
            )

    def admit_create(self) -> float | None:
        with self.lock:
            self.stats.create_requests += 1
            cfg = self.config
            wait = self._window_check(self._creates, cfg.create_limit, cfg.create_period, time.monotonic())
            if wait is not None:
                self.stats.rate_limited["createTask"] += 1
            return wait

    def admit_poll(self) -> float | None:
        with self.lock:
            self.stats.polls += 1
            cfg = self.config
            wait = self._window_check(self._polls, cfg.poll_limit, cfg.poll_period, time.monotonic())
            if wait is not None:
                self.stats.rate_limited["recordInfo"] += 1
            return wait

    # -- tasks ---------------------------------------------------------------------------------
    def cost_of(self, request: dict[str, Any]) -> int:
        """nano-banana-pro costs what the emulator is set to; other models their registry price."""
        inp = request.get("input") or {}
        spec = MODELS.get(request.get("model", ""))
        if spec is None or spec.name == "nano-banana-pro":
            return (
                self.config.cost_per_image_4k if inp.get("resolution") == "4K" else self.config.cost_per_image
            )
        price = spec.price(spec.validate(inp))
        return int(price) if price is not None else self.config.cost_per_image

    def create(self, request: dict[str, Any]) -> Task | int:
        """Create a task, or return the balance when it is too low for this one."""
        with self.lock:
            cost = self.cost_of(request)
            if self.config.balance < cost:
                return self.config.balance
            self.config.balance -= cost
            self.stats.credits_spent += cost
            lo, hi = self.config.latency
            prompt = str((request.get("input") or {}).get("prompt", ""))
            spec = MODELS.get(request["model"])
            output = (
                spec.output(spec.validate(request.get("input") or {})) if spec else Output("1:1", "1K", "png")
            )
            task = Task(
                task_id=uuid.uuid4().hex,
                model=request["model"],
                request=request,
                created_ms=int(time.time() * 1000),
                created_mono=time.monotonic(),
                duration=self._rng.uniform(lo, hi) if hi > lo else lo,
                fail=FAIL_MARKER in prompt,
                stuck=STUCK_MARKER in prompt,
                cost=cost,
                results=max(1, int(self.config.results_per_task), output.count),
                output=output,
            )
            self.tasks[task.task_id] = task
            self.stats.created += 1
            now = task.created_mono
            in_window = sum(1 for t in self._creates if now - t < self.config.create_period)
            self.stats.max_creates_in_window = max(self.stats.max_creates_in_window, in_window)
            return task

    def new_token(self, task_id: str, index: int, ttl: float, *, start: float | None = None) -> str:
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = FileToken(task_id, index, (start or time.monotonic()) + ttl)
        return token

    def record(self, task: Task, base_url: str) -> dict[str, Any]:
        """The recordInfo ``data`` object of a task, as Kie shapes it (JSON strings included)."""
        now = time.monotonic()
        state = task.state_at(now)
        done = state in ("success", "fail")
        complete_ms = task.created_ms + int(task.duration * 1000) if done else None
        result_json = ""
        if state == "success":
            result_json = json.dumps({"resultUrls": self.result_urls(task, base_url)})
        record = {
            "taskId": task.task_id,
            "model": task.model,
            "state": state,
            "param": json.dumps(task.request),
            "resultJson": result_json,
            "failCode": "501" if state == "fail" else None,
            "failMsg": "Generation failed (forced by the emulator's fail marker)"
            if state == "fail"
            else None,
            "costTime": int(task.duration * 1000) if done else None,
            "completeTime": complete_ms,
            "createTime": task.created_ms,
            "updateTime": complete_ms or task.created_ms,
        }
        if self.config.credits_in_record:
            record.update(self.credit_fields(task))
        return record

    def result_urls(self, task: Task, base_url: str) -> list[str]:
        """The result URLs of a successful task, the same on every read."""
        if task.result_tokens is None:
            # One token per result, each valid result_url_ttl from completion.
            task.result_tokens = [
                self.new_token(task.task_id, i, self.config.result_url_ttl, start=task.completed_at())
                for i in range(task.results)
            ]
        base = base_url.rstrip("/")
        return [f"{base}/files/{t}.{task.output.format}" for t in task.result_tokens]

    def credit_fields(self, task: Task) -> dict[str, Any]:
        """``consumeCredits``/``remainedCredits`` as Kie's callbacks carry them."""
        return {"consumeCredits": task.cost, "remainedCredits": self.config.balance}

    def draw_lost_answer(self) -> str | None:
        """For a createTask that created a task: "drop"/"hold" if its answer is to be lost, else None."""
        f = self.config.faults
        with self.lock:
            if f.lost_answer_count > 0:
                f.lost_answer_count -= 1
            elif not (f.lost_answer > 0 and self._fault_rng.random() < f.lost_answer):
                return None
            self.stats.faults["lost_answer"] += 1
            return f.lost_answer_mode

    def draw_callback_lost(self) -> bool:
        """Whether this task's callback is to be lost (the ``callback_lost`` fraction, seeded)."""
        f = self.config.faults
        with self.lock:
            lost = f.callback_lost > 0 and self._fault_rng.random() < f.callback_lost
            if lost:
                self.stats.faults["callback_lost"] += 1
            return lost

    def draw_fault(self) -> str | int | None:
        """Pick at most one fault for a request: a forced code, or one by the configured fractions."""
        f = self.config.faults
        with self.lock:
            if f.force_code is not None and f.force_count > 0:
                f.force_count -= 1
                self.stats.faults[f"code_{f.force_code}"] += 1
                return f.force_code
            r = self._fault_rng.random()
            for name, p in (
                ("error_500", f.error_500),
                ("error_429", f.error_429),
                ("drop", f.drop),
                ("malformed", f.malformed),
                ("slow", f.slow),
            ):
                if r < p:
                    self.stats.faults[name] += 1
                    return name
                r -= p
        return None

    def snapshot(self) -> dict[str, Any]:
        """Counters for tests, benchmarks and the admin endpoint."""
        with self.lock:
            s = self.stats
            return {
                "created": s.created,
                "create_requests": s.create_requests,
                "polls": s.polls,
                "rate_limited": dict(s.rate_limited),
                "faults": dict(s.faults),
                "downloads": s.downloads,
                "downloads_with_auth": s.downloads_with_auth,
                "unauthorized": s.unauthorized,
                "download_url_calls": s.download_url_calls,
                "uploads": self.uploads.count,
                "upload_bytes": self.uploads.bytes,
                "credits_spent": s.credits_spent,
                "balance": self.config.balance,
                "max_creates_in_window": s.max_creates_in_window,
                "max_create_arrivals_in_window": s.max_create_arrivals_in_window,
            }
