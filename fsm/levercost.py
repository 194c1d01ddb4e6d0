"""Does a move or resize pay? Its cost and its benefit, both in requests pushed over the SLO.

Cost: an outage of D seconds holds every request that arrives meanwhile; once the tenant serves
again the backlog drains at the spare rate mu - lambda, which takes D rho / (1 - rho), and the
requests arriving during the drain wait too. The wait falls linearly from about D to 0 over the
outage and the drain, so the share of held requests that wait longer than the SLO is (1 - SLO/D):

    cost = lambda x max(0, D - SLO) / (1 - rho)

(lambda the tenant's request rate, rho its server's utilisation, capped at 0.9). A warm hand-over
whose gap is shorter than the SLO costs nothing by this measure. lambda is the rate the outage
meets: the recent one, or a burst's that began a tick ago (fsm.tick_base._rate_now). And the model
is checked: each outage's requests over the SLO, counted from when it was taken until its backlog
was served, over the prediction, scale the tenant's later prices (measured_scale; `cost_scale`).

Benefit: the lever brings the bad share from its value p back to the budget eps for the rest of
the episode. How long that is cannot be known when the lever is taken; this is the ski-rental
problem (Karlin, Manasse, McGeoch, Owicki, "Competitive randomized algorithms for nonuniform
problems", Algorithmica 11, 1994): every second of waiting pays rent (requests over the SLO beyond
the budget), a lever is bought once (its outage). Buying once the rent paid equals the price is
within a factor 2 of hindsight's best whatever the episode's length, and a known distribution of
lengths lets one buy earlier. So the benefit is the larger of

    the rent paid so far:  requests of this episode over the SLO - eps x its requests, or, if
                           more, the same net count over the recent past (weighted over the
                           outage budget's window, calm stretches paying back): episodes that
                           come and go pay rent too, and a lever that stays saves it in each;
                           a move or resize spends both
    the expected rent:     lambda x max(0, p - eps) x E[episode length]

times `efficacy`. E[episode length] is learned per tenant from its recent episodes (the posterior
mean length, with a prior of `episode_prior_s` worth one episode); p is the episode's own bad share
once it holds 1/eps requests (the last minute's before that). `efficacy` is what the diagnosis lets
us expect of the lever (1 when it found the cause on the victim's path, less when it did not: a
burst of the tenant's own arrivals follows it to the new instance).

A relaunch may fail: the new copy never gets ready, and the launcher gives up after its readiness
wait and starts the tenant where it was. Such a move cures nothing and holds the tenant for the
wait and the relaunch back (none for a warm hand-over, whose old copy serves on). With f the
tenant's failure risk (fail_risk: a prior of `relaunch_fail_prior` worth FAIL_PRIOR_WEIGHT
relaunches, and the tenant's own relaunches), the cost is (1 - f) x the outage's + f x the failed
outage's, and the benefit (1 - f) x the cure's.

A lever is taken only when benefit >= margin x cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fsm.evolve import field_setters

MAX_RHO = 0.9
# One measured outage may meet a burst or a calm spell: it moves the scale at most this far.
MIN_SCALE, MAX_SCALE = 0.25, 10.0
# How many relaunches the prior failure risk (Policy.relaunch_fail_prior) is worth: one failure in
# a tenant's first relaunch makes a prior of 0 1 in 11 (9%), one of 2% 11%; none in ten halves it.
FAIL_PRIOR_WEIGHT = 10.0


def fail_risk(prior: float, relaunches: int, fails: int) -> float:
    """The probability that a relaunch's new copy never gets ready: the Beta posterior mean."""
    return (prior * FAIL_PRIOR_WEIGHT + fails) / (FAIL_PRIOR_WEIGHT + relaunches)


def measured_scale(served: float, bad: float, share_before: float, predicted: float) -> float:
    """What one outage cost against the model: the requests over the SLO from when it was taken
    until its backlog settled, less those the share before would have put there anyway, over the
    model's prediction (outage_cost)."""
    return min(max(max(0.0, bad - share_before * served) / predicted, MIN_SCALE), MAX_SCALE)


@dataclass(frozen=True, slots=True)
class LeverCost:
    lever: str
    outage_s: float
    outage_source: str  # "measured" | "configured" | "own restarts" (fsm.outage.priced_relaunch)
    rate_rps: float
    rho: float
    cost: float  # requests expected over the SLO because of the outage
    bad_share: float
    budget_share: float
    remaining_s: float
    rent: float  # requests of this episode over the SLO beyond the budget so far
    elapsed_s: float
    efficacy: float
    benefit: float  # requests expected kept under the SLO by the lever
    scale: float = 1.0  # the tenant's measured outages' cost / the model's (1: none measured)
    outage_rate_rps: float = 0.0  # the arrival rate the outage meets (a burst's, when one began)
    fail_risk: float = 0.0  # the probability its new copy never gets ready
    failed_outage_s: float = 0.0  # the outage then (the readiness wait and a relaunch back)

    def pays(self, margin: float) -> bool:
        return self.benefit >= margin * self.cost

    def as_evidence(self) -> dict[str, float | str]:
        return {
            "lever": self.lever,
            "outage_s": round(self.outage_s, 2),
            "outage_source": self.outage_source,
            "rate_rps": round(self.rate_rps, 3),
            "utilisation": round(self.rho, 3),
            "cost_requests": round(self.cost, 1),
            "cost_scale": round(self.scale, 2),
            "outage_rate_rps": round(self.outage_rate_rps, 3),
            "bad_share": round(self.bad_share, 4),
            "budget_share": round(self.budget_share, 4),
            "expected_episode_s": round(self.remaining_s, 1),
            "episode_elapsed_s": round(self.elapsed_s, 1),
            "rent_requests": round(self.rent, 1),
            "efficacy": round(self.efficacy, 2),
            "benefit_requests": round(self.benefit, 1),
            "fail_risk": round(self.fail_risk, 4),
            "failed_outage_s": round(self.failed_outage_s, 1),
        }


def expected_remaining(episodes: Sequence[float], prior_s: float) -> float:
    """Posterior mean episode length: `prior_s` counts as one episode already seen."""
    return (prior_s + sum(episodes)) / (1 + len(episodes))


# Unknown utilisation (no SM activity and no window for Little's law, tick_base._utilisation):
# assume a server half busy (the cost doubles the plain outage).
UNKNOWN_RHO = 0.5


def outage_cost(rate_rps: float, outage_s: float, slo_s: float, rho: float) -> float:
    r = min(max(rho, 0.0), MAX_RHO)
    return rate_rps * max(0.0, outage_s - slo_s) / (1.0 - r)


@dataclass(frozen=True, slots=True)
class Rent:
    """What any lever of one tenant is priced against on one tick (estimate() without the lever):
    the rate, utilisation, bad share, expected episode and rent, and the benefit before efficacy."""

    rate_rps: float
    rho: float
    bad_share: float
    budget_share: float
    remaining_s: float
    rent: float
    elapsed_s: float
    gain: float  # requests a full cure keeps under the SLO: the benefit at efficacy 1


def episode_share(episode_requests: float, episode_bad: float, budget_share: float) -> float | None:
    """The episode's own share over the SLO once it holds 1/budget_share requests (None before:
    too few to say more than the recent share does)."""
    if budget_share > 0 and episode_requests * budget_share >= 1.0:
        return episode_bad / episode_requests
    return None


def rent_of(
    *,
    rate_rps: float,
    rho: float | None,
    bad_share: float | None,
    budget_share: float,
    episodes: Sequence[float],
    prior_s: float,
    elapsed_s: float = 0.0,
    episode_requests: float = 0.0,
    episode_bad: float = 0.0,
    window_rent: float = 0.0,
) -> Rent:
    r = UNKNOWN_RHO if rho is None else min(max(rho, 0.0), MAX_RHO)
    share = episode_share(episode_requests, episode_bad, budget_share)
    if share is None:
        share = bad_share if bad_share is not None else 0.0
    remaining = expected_remaining(episodes, prior_s)
    episode_rent = episode_bad - budget_share * episode_requests
    rent = max(0.0, episode_rent, window_rent)
    gain = max(rent, rate_rps * max(0.0, share - budget_share) * remaining)
    return Rent(rate_rps, r, share, budget_share, remaining, rent, elapsed_s, gain)


def price(
    rent: Rent,
    lever: str,
    outage_s: float,
    outage_source: str,
    slo_s: float,
    efficacy: float,
    scale: float = 1.0,
    outage_rate: float | None = None,
    fail: tuple[float, float] = (0.0, 0.0),
) -> LeverCost:
    """One lever's cost and benefit against the tick's rent. The cost is the model's at the rate the
    outage meets (`outage_rate`, default the rent's), times `scale`: what this tenant's outages
    were measured to cost against the model (MIN_SCALE..MAX_SCALE). `fail`: the risk that the new
    copy never gets ready, and the outage then."""
    meets = rent.rate_rps if outage_rate is None else outage_rate
    risk, failed_s = fail
    cost = outage_cost(meets, outage_s, slo_s, rent.rho)
    if risk > 0.0:
        cost = (1.0 - risk) * cost + risk * outage_cost(meets, failed_s, slo_s, rent.rho)
    # LeverCost(...) through its slots' setters: a frozen dataclass's __init__ sets 13 fields
    # through object.__setattr__, and every lever a hold considers is priced (the same value).
    c: LeverCost = _new(LeverCost)
    (s_lever, s_outage, s_source, s_rate, s_rho, s_cost, s_share, s_budget, s_remaining, s_rent, s_elapsed,
     s_efficacy, s_benefit, s_scale, s_meets, s_risk, s_failed) = _COST_SET  # fmt: skip
    s_lever(c, lever)
    s_outage(c, outage_s)
    s_source(c, outage_source)
    s_rate(c, rent.rate_rps)
    s_rho(c, rent.rho)
    s_cost(c, cost * scale)
    s_share(c, rent.bad_share)
    s_budget(c, rent.budget_share)
    s_remaining(c, rent.remaining_s)
    s_rent(c, rent.rent)
    s_elapsed(c, rent.elapsed_s)
    s_efficacy(c, efficacy)
    s_benefit(c, rent.gain * efficacy * (1.0 - risk))
    s_scale(c, scale)
    s_meets(c, meets)
    s_risk(c, risk)
    s_failed(c, failed_s)
    return c


_COST_SET = field_setters(LeverCost)
_new = object.__new__


def estimate(
    lever: str, *, outage_s: float, outage_source: str, slo_s: float, efficacy: float, **rent: Any
) -> LeverCost:
    """One lever priced on its own: price(rent_of(**rent), ...)."""
    return price(rent_of(**rent), lever, outage_s, outage_source, slo_s, efficacy)
