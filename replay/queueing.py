"""One server per MIG instance, first come first served: the Lindley recursion, vectorised.

Departure of request n: D_n = max(t_n, D_{n-1}) + S_n. Unrolled, with C_n = S_1 + ... + S_n,
D_n = C_n + max(D_0, max_{k<=n} (t_k - C_{k-1})): a cumulative sum and a running maximum, which is
the W = X - running min(X) form of the recursion. `free_at` carries D_0 from one tick to the next
(and holds the server during a downtime), so the queue, not a formula, makes the tail.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def lindley(arrivals: Array, service: Array, free_at: float) -> tuple[Array, float]:
    """(sojourn time of each request, when the server is free again). Arrivals must be sorted."""
    if arrivals.size == 0:
        return np.empty(0), free_at
    c = np.cumsum(service)
    start_key = arrivals - (c - service)  # t_k - C_{k-1}
    np.maximum.accumulate(start_key, out=start_key)
    np.maximum(start_key, free_at, out=start_key)
    departures = c + start_key
    return departures - arrivals, float(departures[-1])


def lindley_loop(arrivals: Array, service: Array, free_at: float) -> tuple[Array, float]:
    """The plain recursion, one request at a time (the reference the tests compare against)."""
    out = np.empty(arrivals.size)
    d = free_at
    for i, (t, s) in enumerate(zip(arrivals.tolist(), service.tolist(), strict=True)):
        d = max(t, d) + s
        out[i] = d - t
    return out, d
