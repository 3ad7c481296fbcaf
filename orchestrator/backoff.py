"""Pure retry arithmetic: exponential backoff with full jitter.

No clock and no global random state: callers pass the attempt number and a random source, so tests
can pin every figure.
"""

from __future__ import annotations

import random


def retry_delay_s(
    attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    The cap grows as ``base_s * 2 ** (attempt - 1)`` up to ``max_s``; the delay is drawn uniformly
    from the upper half of that cap, so retries spread out but never collapse to zero.
    Raises ValueError for an attempt below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    cap = float(min(max_s, base_s * 2 ** min(attempt - 1, 62)))
    draw: float = (rng or random).random()
    return cap / 2 + draw * cap / 2


def reconnect_delay_s(failures: int, *, max_s: float = 2.0) -> float:
    """Seconds to wait before reconnect number ``failures`` (1-based): 0.1, 0.2, 0.4 ... max_s."""
    return float(min(max_s, 0.1 * 2 ** min(max(failures - 1, 0), 30)))
