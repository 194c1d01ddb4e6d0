"""The ranges a Policy's numbers must lie in, for the policies replay reads from files the config
loader never sees: a scenario's [policy], a canary's policy files, a trace header's spec. The
decision core divides by some of them (sm_busy, y_windows, ...) and trusts the rest.

The same bounds as the config's [policy] (controller/config.py PolicyConfig; a test keeps the two
equal), and for the fields only a Policy has, >= 0 (weights) or > 0 (norms). replay/ may not
import controller/, hence the table.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fsm.spec import Policy
from schema.jsontext import finite_float, shown

DAY = 86400
# name -> (low, low excluded, high, high excluded); None: unbounded on that side.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "evidence_burn": (1, True, 100, False),
    "evidence_alpha": (0, True, 0.5, True),
    "release_burn": (0, True, 1, True),
    "release_alpha": (0, True, 1, True),
    "rate_tau_s": (0, True, DAY, False),
    "cost_margin": (0, False, 1000, False),
    "episode_prior_s": (0, True, 7 * DAY, False),
    "relaunch_fail_prior": (0, False, 1, True),
    "unknown_cause_efficacy": (0, False, 1, False),
    "guard_lesson_s": (0, False, 90 * DAY, False),
    "guard_min_cut": (0, False, 1, False),
    "y_windows": (1, False, 100, False),
    "z_windows": (1, False, 1000, False),
    "release_ratio": (0, True, 1, True),
    "release_horizon_windows": (1, False, 10_000, False),
    "min_window_count": (1, False, None, False),
    "cooldown_s": (0, False, None, False),
    "dwell_s": (0, False, None, False),
    "throttle_factor": (0, True, 1, False),
    "throttle_floor_bps": (1, False, 1e13, False),
    "throttle_expiry_s": (0, True, None, False),
    "guard_relief_s": (0, False, None, False),
    "mps_guard_percent": (1, False, 100, False),
    "max_reconfigs_per_hour": (0, False, 60, False),
    "hold_retries_per_tick": (0, False, 10_000, False),
    "outage_budget_share": (0, False, 10, False),
    "outage_budget_window_s": (60, False, 90 * DAY, False),
    "outage_warmup_s": (0, False, DAY, False),
    "outage_spread_sigmas": (0, False, 10, False),
    "outage_tail_margin": (0, False, 100, False),
    "outage_window_anchor_s": (0, False, 1e11, False),
    "outage_tail_prior_s": (0, False, 7 * DAY, False),
    "guard_cost_share": (0, False, 1, False),
    "guard_budget_window_s": (60, False, 90 * DAY, False),
    "backoff_s": (0, False, None, False),
    "backoff_max_s": (0, False, None, False),
    "in_flight_timeout_s": (0, True, None, False),
    "pcie_busy_ratio": (0, True, 1, False),
    "sm_busy": (0, True, 1, False),
    "dram_busy": (0, True, 1, False),
    "high_bw_bps": (0, True, None, False),
    # Only in a Policy (not in the config): weights and thresholds >= 0, norms that divide > 0.
    "io_aggressor_min_bps": (0, False, None, False),
    "w_root_complex": (0, False, None, False),
    "w_numa_block": (0, False, None, False),
    "w_irq": (0, False, None, False),
    "w_move": (0, False, None, False),
    "move_other_gpu": (0, False, None, False),
    "placement_margin": (0, False, None, False),
    "block_io_norm_bps": (0, True, None, False),
    "irq_norm_rate": (0, True, None, False),
}


def value_problem(name: str, v: Any) -> str | None:
    """What is wrong with `v` for Policy field `name` (None: nothing, or not a ranged field)."""
    rng = RANGES.get(name)
    if rng is None or v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    lo, lo_x, hi, hi_x = rng
    if finite_float(v) is None:  # NaN, an infinity, or an int past a float's range (10**400 raised here)
        return f"must be a finite number (got {shown(v)})"
    if lo is not None and (v <= lo if lo_x else v < lo):
        return f"must be {'>' if lo_x else '>='} {lo:g} (got {v!r})"
    if hi is not None and (v >= hi if hi_x else v > hi):
        return f"must be {'<' if hi_x else '<='} {hi:g} (got {v!r})"
    return None


def policy_problems(policy: Policy) -> list[str]:
    """'FIELD: what is wrong' for each field of `policy` out of its range, plus backoff's order."""
    out = []
    for f in fields(policy):
        v = getattr(policy, f.name)
        if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            # a count (y_windows, hold_retries_per_tick, ...): 0.5 would slice a list mid-run
            out.append(f"{f.name}: must be an integer (got {v!r})")
            continue
        why = value_problem(f.name, v)
        if why is not None:
            out.append(f"{f.name}: {why}")
    if policy.backoff_max_s < policy.backoff_s:
        out.append(f"backoff_max_s: must be at least backoff_s ({policy.backoff_s:g})")
    return out
