"""Fault injection: the network and DMP misbehaviours the connector must survive.

- latency: every answer waits `latency_ms`;
- fail_rate: the request is refused BEFORE anything is stored, half of the time as an HTTP 503 with a
  small HTML page (a load balancer), half as a SOAP Failure XDSRegistryBusy (the DMP itself);
- drop_after_commit_rate: a successful submission is stored and committed, then the connection is
  closed without any response: the client sees an unknown outcome and must reconcile, not duplicate.

Decisions come from one seeded random generator, so a run with a seed replays the same sequence
(for requests arriving in the same order).
"""

from __future__ import annotations

import enum
import random
import threading
import time
from dataclasses import dataclass


class Fault(enum.Enum):
    NONE = "none"
    HTTP_503 = "http-503"
    BUSY = "busy"


HTML_503 = (
    b"<html><head><title>503 Service Unavailable</title></head>"
    b"<body><h1>Service Unavailable</h1><p>The DMP is temporarily unavailable.</p></body></html>"
)


@dataclass
class FaultInjector:
    latency_ms: int = 0
    fail_rate: float = 0.0
    drop_after_commit_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self):
        for name in ("fail_rate", "drop_after_commit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def _draw(self) -> float:
        with self._lock:
            return self._random.random()

    def delay(self) -> None:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)

    def failure(self) -> Fault:
        """Whether to refuse this request, and how; decided before anything is stored."""
        if self.fail_rate and self._draw() < self.fail_rate:
            return Fault.HTTP_503 if self._draw() < 0.5 else Fault.BUSY
        return Fault.NONE

    def drop_reply(self) -> bool:
        """Whether to commit this submission and then hang up without answering."""
        return bool(self.drop_after_commit_rate) and self._draw() < self.drop_after_commit_rate
