"""Retry backoff schedule: exponential with full jitter, capped. Pure: randomness is passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(attempt)`` for the wait before attempt ``attempt + 1``.

    base * factor**(attempt-1), capped at ``max_delay``; ``jitter`` is the fraction of the delay
    drawn at random (0 = none, 1 = "full jitter" as in AWS's backoff study).
    """

    base: float = 0.5
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float) -> float:
        """``rand`` is a uniform draw in [0, 1) from the caller's RNG."""
        raw = min(self.max_delay, self.base * self.factor ** max(0, attempt - 1))
        return raw * (1.0 - self.jitter * rand)


DEFAULT_RETRY = RetryPolicy()
