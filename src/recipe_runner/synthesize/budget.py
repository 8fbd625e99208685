"""A spending cap on the generator: requests and tokens, never exceeded, even with concurrency.

A request is sent only after reserve() counted it with an upper bound of its tokens; once the
answer says what it really cost, settle() puts the true count in place of the bound. Concurrent
requests therefore each hold their worst case until they are answered, and the sum of all
reservations and settled counts never passes the limit. spent_* start a resumed run from what
earlier runs spent (the caller stores them), so resuming does not buy a second budget.
"""

from __future__ import annotations

import threading


class Budget:
    def __init__(self, max_requests: int | None, max_tokens: int | None, spent_requests: int = 0,
                 spent_tokens: int = 0):
        """None = unlimited."""
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self._requests, self._tokens = spent_requests, spent_tokens
        self._lock = threading.Lock()

    def reserve(self, tokens: int) -> bool:
        """One request of at most `tokens` tokens: True and counted, or False if a limit would be passed."""
        with self._lock:
            if self.max_requests is not None and self._requests + 1 > self.max_requests:
                return False
            if self.max_tokens is not None and self._tokens + tokens > self.max_tokens:
                return False
            self._requests += 1
            self._tokens += tokens
            return True

    def settle(self, reserved: int, actual: int | None) -> None:
        """Replace a reservation by the request's actual token count (None: keep the reservation)."""
        if actual is None:
            return
        with self._lock:
            self._tokens += actual - reserved

    @property
    def spent_requests(self) -> int:
        return self._requests

    @property
    def spent_tokens(self) -> int:
        return self._tokens

    def left(self) -> str:
        """e.g. "37 requests, 12,400 tokens left", "37 requests left" or "unlimited"."""
        with self._lock:
            parts = [f"{limit - spent:,} {what}" for limit, spent, what in (
                (self.max_requests, self._requests, "requests"), (self.max_tokens, self._tokens, "tokens"))
                if limit is not None]
        return ", ".join(parts) + " left" if parts else "unlimited"
