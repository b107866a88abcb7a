"""One file over HTTP(S) with retries, exponential backoff and checks, no third-party client.

Transient failures (connection errors, timeouts, HTTP 408/429/5xx, a body shorter than its
``Content-Length``, a file that does not decode) are retried after ``backoff * 2**attempt``
seconds (with jitter, capped); a permanent one (HTTP 404 and the other 4xx) fails at once.
"""

from __future__ import annotations

import http.client
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

USER_AGENT = "hpa-tf (https://github.com/hpa-tf/hpa-tf)"
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchError(IOError):
    """A file that could not be fetched; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class RetryPolicy:
    """``RetryPolicy(attempts=5, timeout=60, backoff=1.0)``: at most 5 tries, 60 s per socket wait."""

    attempts: int = 5
    timeout: float = 60.0
    backoff: float = 1.0
    max_backoff: float = 60.0


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
        expected = response.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and len(body) != int(expected):
        raise FetchError(f"{url}: got {len(body)} of {expected} bytes (connection cut)")
    return body


def fetch(url: str, policy: RetryPolicy = RetryPolicy(), check: Callable[[bytes], None] | None = None,
          sleep: Callable[[float], None] = time.sleep) -> tuple[bytes, int]:
    """The body of ``url`` after ``check`` (which raises on a bad file) passed; returns (body, attempts).

    >>> body, tries = fetch("https://images.proteinatlas.org/10005/921_B9_1_red.jpg")  # doctest: +SKIP
    """
    last = ""
    for attempt in range(max(policy.attempts, 1)):
        if attempt:
            delay = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
            sleep(delay * random.uniform(0.5, 1.0))
        try:
            body = _get(url, policy.timeout)
            if check is not None:
                check(body)
            return body, attempt + 1
        except urllib.error.HTTPError as err:
            if err.code not in _RETRY_STATUS:
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}", permanent=True) from err
            last = f"HTTP {err.code} {err.reason}"
        except FetchError as err:
            last = str(err)
        except http.client.IncompleteRead as err:
            last = f"connection cut after {len(err.partial)} of {len(err.partial) + (err.expected or 0)} bytes"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # incl. timeouts, cut bodies
            reason = getattr(err, "reason", err)
            last = f"{type(reason).__name__}: {reason}"
        except ValueError as err:  # the check: a corrupt or truncated file
            last = f"bad file: {err}"
    raise FetchError(f"{url}: failed {policy.attempts} times; last: {last}")
