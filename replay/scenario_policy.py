"""A scenario's [policy] table (and a canary's policy file) as an fsm.spec.Policy, checked as the
daemon's config checks the same keys."""

from __future__ import annotations

from typing import Any

from fsm.mig import checked_ladder
from fsm.spec import Policy
from fsm.topology import Tier
from replay.policy_ranges import policy_problems

# io_share_tier as the daemon's config spells it (controller/config.py PolicyConfig; a test keeps
# the two equal), or as the tier's number (fsm.topology.Tier: 1 switch ... 4 system).
TIERS = {"switch": Tier.SWITCH, "root_complex": Tier.ROOT_COMPLEX, "numa": Tier.NUMA, "system": Tier.SYSTEM}


def policy_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A [policy] table (a scenario's, a canary's policy file) as Policy field values: the keys the
    config spells its own way turned into the Policy's (io_share_tier "numa" -> Tier.NUMA,
    mig_ladder's lists -> tuples), each checked as the config checks it. ValueError naming
    `where`.KEY otherwise; policy_from then checks the ranges."""
    known = set(Policy.__dataclass_fields__)
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{where}: unknown policy key(s) {', '.join(bad)}")
    if "enforce" in overrides:  # `enforce = false` made "full" a dry run that printed figures
        raise ValueError(
            f"{where}.enforce: not a [policy] key here: the runner sets it per policy (every policy of a"
            " replay applies its decisions, a shadow replay none; `tailguard run --simulate --dry-run` for a"
            " dry run); leave it out"
        )
    out = dict(overrides)
    if "mig_ladder" in out:  # an unknown profile ended a run in KeyError at its first resize
        try:
            out["mig_ladder"] = {k: tuple(v) for k, v in checked_ladder(out["mig_ladder"]).items()}
        except ValueError as e:
            raise ValueError(f"{where}.mig_ladder: {e}") from None
    if "io_share_tier" in out:
        v = out["io_share_tier"]
        if isinstance(v, str) and v in TIERS:
            out["io_share_tier"] = TIERS[v]
        elif isinstance(v, int) and not isinstance(v, bool) and v in set(TIERS.values()):
            out["io_share_tier"] = Tier(v)
        else:
            names = ", ".join(f'"{k}" ({int(t)})' for k, t in TIERS.items())
            raise ValueError(f"{where}.io_share_tier: expected one of {names}, got {v!r}")
    return out


def policy_from(overrides: dict[str, Any], where: str) -> Policy:
    overrides = policy_overrides(overrides, where)
    for k, v in overrides.items():
        default = getattr(Policy(), k)
        if isinstance(default, bool) != isinstance(v, bool) or not isinstance(v, type(default) | int | float):
            raise ValueError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}")
    try:
        policy = Policy(**overrides)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    bad = policy_problems(policy)
    if bad:  # y_windows = 0 or sm_busy = 0 would end a run in ZeroDivisionError
        raise ValueError("; ".join(f"{where}.{p}" for p in bad))
    return policy
