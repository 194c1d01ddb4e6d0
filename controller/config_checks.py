"""Checks across the sections of a config that pydantic's per-field validation cannot make:
GPU references, MIG placement, shared cgroups, duplicate names, listen addresses.

Each Problem names its key path (`tenants[1](etl).instance`) and, in its message, every tenant
involved. Errors are what `run` would fail on or misapply; warnings are legal but probably not
meant. Nothing here touches the filesystem (controller/config_files.py does). `model_problems`
runs in the model's validator; `mig_problems` and the warnings in controller/config.py
`check_loaded`, which `check-config`, `run` at start and a SIGHUP reload all go through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

from controller.signals.base import observe_deadline_s
from fsm.mig import MODELS, GpuModel, Slot, layout_problems, model_by_name, slot_range
from fsm.observation import InstanceRef
from fsm.outage import MoveKind, move_outage_s
from fsm.spec import Role
from fsm.tick_base import outage_tail

if TYPE_CHECKING:
    from controller.config import Config, TenantConfig

# With no [[gpus]] the samplers name GPUs by NVML index (controller/signals/nvml.py).
_NVML_NAME = re.compile(r"^gpu\d+$")
# Roles the guard may cap (fsm/diagnosis.py: throttleable) and roles it must never cap.
THROTTLEABLE = (Role.BULK, Role.COMPUTE)
NEVER_CAPPED = (Role.SENSITIVE, Role.PROTECTED)


@dataclass(frozen=True, slots=True)
class Problem:
    key: str  # dotted key path, list items labelled: tenants[1](etl).cgroup
    message: str
    error: bool = True  # False: a warning (printed, exit 0)

    def line(self) -> str:
        return f"{self.key}: {self.message}" if self.error else f"{self.key}: warning: {self.message}"


def tkey(i: int, t: TenantConfig, key: str = "") -> str:
    return f"tenants[{i}]({t.name})" + (f".{key}" if key else "")


def cross_problems(cfg: Config, models: Callable[[str], GpuModel | None] | None = None) -> list[Problem]:
    """Every cross-section problem of a config valid per field: errors and warnings."""
    return model_problems(cfg) + mig_problems(cfg, models)


def model_problems(cfg: Config) -> list[Problem]:
    """What the model itself refuses (Config's validator): names, GPU references, cgroups that
    would cap one another, exporters; and the warnings of the same kinds."""
    return [
        *_names(cfg), *_gpu_refs(cfg), *_cgroups(cfg), *_exporters(cfg), *_coverage(cfg), *_outage_fit(cfg),
        *_readiness(cfg), *_reconfig_cap(cfg), *_relaunch_unset(cfg), *_low_quantile(cfg), *_slow_sources(cfg),
    ]  # fmt: skip


def mig_problems(cfg: Config, models: Callable[[str], GpuModel | None] | None = None) -> list[Problem]:
    """MIG homes against the GPUs' profile tables. `models(gpu_name)` gives a GPU's table where
    something better than the config's `model` key is known (the driver's `-lgip`/`-lgipp`
    listings: the driver wins); by default the built-in table of the configured model, or, for a
    GPU without one, every known model (what NVML will report is not known offline). Not part of
    the model's validation, so that a driver's table can overrule the built-in one."""
    return _mig(cfg, models)


def _names(cfg: Config) -> list[Problem]:
    out = []
    seen: dict[str, int] = {}
    for i, t in enumerate(cfg.tenants):
        if t.name in seen:
            out.append(
                Problem(tkey(i, t, "name"), f"tenant names must be unique; {t.name!r} is also tenants[{seen[t.name]}]")
            )
        seen.setdefault(t.name, i)
    by_name: dict[str, int] = {}
    by_index: dict[int, int] = {}
    for i, g in enumerate(cfg.gpus):
        if g.name in by_name:
            j = by_name[g.name]
            out.append(Problem(f"gpus[{i}]({g.name}).name", f"gpu names must be unique; {g.name!r} is also gpus[{j}]"))
        if g.index in by_index:
            j = by_index[g.index]
            other = cfg.gpus[j].name
            out.append(
                Problem(
                    f"gpus[{i}]({g.name}).index", f"index {g.index} is also gpus[{j}]({other})'s: one GPU, two names"
                )
            )
        by_name.setdefault(g.name, i)
        by_index.setdefault(g.index, i)
    return out


def _known_gpu(cfg: Config, name: str) -> str | None:
    """Why `name` names no GPU of this config (None when it does)."""
    if cfg.gpus:
        names = [g.name for g in cfg.gpus]
        if name not in names:
            return f"GPU {name!r} is not in [[gpus]] (known: {', '.join(names)})"
    elif not _NVML_NAME.match(name):
        return f"GPU {name!r}: with no [[gpus]] section GPUs are named gpu0, gpu1, ... by NVML index"
    return None


def _gpu_refs(cfg: Config) -> list[Problem]:
    out = []
    for i, t in enumerate(cfg.tenants):
        if t.gpu is not None and (why := _known_gpu(cfg, t.gpu)):
            out.append(Problem(tkey(i, t, "gpu"), f"{why}; tenant {t.name}"))
        if t.instance is not None:
            ref = InstanceRef.parse(t.instance)
            if ref.gpu != t.gpu and (why := _known_gpu(cfg, ref.gpu)):
                out.append(Problem(tkey(i, t, "instance"), f"{why}; tenant {t.name}"))
    return out


def _candidates(cfg: Config, gpu: str, models: Callable[[str], GpuModel | None] | None) -> tuple[list[GpuModel], bool]:
    """The MIG tables `gpu` may have, and whether that is known (a configured or probed model)."""
    if models is not None and (m := models(gpu)) is not None:
        return [m], True
    for g in cfg.gpus:
        if g.name == gpu and g.model:
            return [model_by_name(g.model)], True
    return list(MODELS.values()), False


def _mig(cfg: Config, models: Callable[[str], GpuModel | None] | None) -> list[Problem]:
    """Each home instance against its GPU's profiles and placement rules, then the homes of one GPU
    together (no overlap, no profile past its count), then no instance named twice."""
    out: list[Problem] = []
    homes: dict[str, list[tuple[int, TenantConfig, Slot]]] = {}
    for i, t in enumerate(cfg.tenants):
        if t.instance is None:
            continue
        ref = InstanceRef.parse(t.instance)
        if _known_gpu(cfg, ref.gpu):
            continue  # reported by _gpu_refs
        homes.setdefault(ref.gpu, []).append((i, t, ref.slot))
    for gpu, items in sorted(homes.items()):
        cands, known = _candidates(cfg, gpu, models)
        ok: list[tuple[int, TenantConfig, Slot]] = []
        for i, t, slot in items:
            why = _slot_problem(cands, known, slot)
            if why:
                out.append(Problem(tkey(i, t, "instance"), f"{t.instance}: {why}; tenant {t.name}"))
            else:
                ok.append((i, t, slot))
        out += _together(gpu, cands, known, ok)
    first: dict[str, tuple[int, TenantConfig]] = {}
    for i, t in enumerate(cfg.tenants):
        if t.instance is None:
            continue
        if t.instance in first:
            j, other = first[t.instance]
            out.append(
                Problem(
                    tkey(i, t, "instance"),
                    f"tenants {other.name} and {t.name} both name MIG instance {t.instance} as their home"
                    f" (also tenants[{j}]({other.name}).instance); one instance serves one tenant",
                )
            )
        first.setdefault(t.instance, (i, t))
    return out


def _named(m: GpuModel, profile: str) -> bool:
    # By its name as -lgip prints it: the layouts read back from the driver compare by name, so an
    # ID ("9") or "MIG 3g.20gb" would never match the instance it means.
    return m.has_profile(profile) and m.profile(profile).name == profile


def _slot_problem(cands: list[GpuModel], known: bool, slot: Slot) -> str | None:
    have = [m for m in cands if _named(m, slot.profile)]
    alias = [m.profile(slot.profile).name for m in cands if m.has_profile(slot.profile)]
    if not have and alias:
        return f"write the profile by its name, {alias[0]!r}, not {slot.profile!r}"
    if not have:
        if known:
            m = cands[0]
            have_names = ", ".join(p.name for p in m.profiles)
            return f"GPU model {m.key} has no MIG profile {slot.profile!r} (it has {have_names})"
        return f"no known GPU model has a MIG profile {slot.profile!r}"
    legal = [m for m in have if slot.start in m.profile(slot.profile).placements]
    if not legal:
        starts = sorted({s for m in have for s in m.profile(slot.profile).placements})
        where = f" on GPU model {have[0].key}" if known else ""
        return f"{slot.profile}{where} may start only at {starts} (memory slot), not {slot.start}"
    return None


def _legal(m: GpuModel, s: Slot) -> bool:
    return _named(m, s.profile) and s.start in m.profile(s.profile).placements


def _together(
    gpu: str, cands: list[GpuModel], known: bool, items: list[tuple[int, TenantConfig, Slot]]
) -> list[Problem]:
    unique: dict[Slot, tuple[int, TenantConfig, Slot]] = {}
    for x in items:
        unique.setdefault(x[2], x)  # the same instance twice is _mig's to report
    items = list(unique.values())
    if len(items) < 2:
        return []
    slots = [s for _, _, s in items]
    fit = [m for m in cands if all(_legal(m, s) for s in slots)]
    names = ", ".join(t.name for _, t, _ in items)
    if not fit:
        i, t, _ = items[-1]
        return [
            Problem(
                tkey(i, t, "instance"),
                f"no known GPU model offers every profile homed on {gpu} ({', '.join(str(s) for s in slots)}:"
                f" tenants {names}); set gpus.model or fix the profiles",
            )
        ]
    if not all(layout_problems(m, slots) for m in fit):
        return []  # some model the GPU may be takes this layout
    m = fit[0]
    out = []
    for (_, a, sa), (j, b, sb) in combinations(items, 2):
        shared = set(slot_range(m, sa)) & set(slot_range(m, sb))
        if shared and all(set(slot_range(x, sa)) & set(slot_range(x, sb)) for x in fit):
            out.append(
                Problem(
                    tkey(j, b, "instance"),
                    f"{b.instance} overlaps {a.instance} (tenant {a.name}) at memory slot(s) {sorted(shared)}"
                    f"{' on GPU model ' + m.key if known else ''}; tenants {a.name} and {b.name}",
                )
            )
    if not out:  # no overlap in every model: a profile past its count
        i, t, _ = items[-1]
        why = "; ".join(layout_problems(m, slots))
        out.append(Problem(tkey(i, t, "instance"), f"the homes on {gpu} do not fit together ({why}): tenants {names}"))
    return out


def _ancestor_or_same(a: str, b: str) -> bool:
    """cgroup `a` is `b` or contains it (io.max on `a` limits everything below it)."""
    return a == b or b.startswith(a.rstrip("/") + "/")


def _cgroups(cfg: Config) -> list[Problem]:
    out = []
    groups = [(i, t) for i, t in enumerate(cfg.tenants) if t.cgroup]
    for (_, a), (j, b) in combinations(groups, 2):
        assert a.cgroup is not None and b.cgroup is not None
        for capped, kept in ((a, b), (b, a)):
            assert capped.cgroup is not None and kept.cgroup is not None
            if (
                capped.role in THROTTLEABLE
                and kept.role in NEVER_CAPPED
                and _ancestor_or_same(capped.cgroup, kept.cgroup)
            ):
                rel = "the same cgroup as" if capped.cgroup == kept.cgroup else "a cgroup that contains that of"
                out.append(
                    Problem(
                        tkey(j, b, "cgroup"),
                        f"{capped.role.value} tenant {capped.name} ({capped.cgroup}) has {rel} {kept.role.value}"
                        f" tenant {kept.name} ({kept.cgroup}): capping {capped.name} would cap {kept.name};"
                        " give each its own cgroup",
                    )
                )
                break
        else:
            if a.role in THROTTLEABLE and b.role in THROTTLEABLE and a.cgroup == b.cgroup:
                out.append(
                    Problem(
                        tkey(j, b, "cgroup"),
                        f"tenants {a.name} and {b.name} share cgroup {a.cgroup}: a cap meant for one caps both,"
                        " and their I/O cannot be told apart",
                        error=False,
                    )
                )
    return out


def _exporters(cfg: Config) -> list[Problem]:
    from controller.listen import is_loopback, split_listen

    out = []
    prom = cfg.exporters.prometheus
    host, _ = split_listen(prom.listen)
    if prom.enabled and not is_loopback(host):
        out.append(
            Problem(
                "exporters.prometheus.listen",
                f"{prom.listen}: metrics and /status (decision evidence) are reachable from other hosts"
                " (allow_remote = true); firewall the port",
                error=False,
            )
        )
    pushed = [(i, t) for i, t in enumerate(cfg.tenants) if t.latency is not None and t.latency.kind == "mqtt"]
    mqtt = cfg.exporters.mqtt
    if pushed and not (mqtt.enabled and mqtt.latency_ingest):
        # Their latencies arrive on tailguard/<host>/latency/<tenant>: without the bridge, or with
        # it not subscribed to them, never; the tenant would never be judged.
        fix = "set exporters.mqtt.enabled = true" if not mqtt.enabled else "set exporters.mqtt.latency_ingest = true"
        for i, t in pushed:
            out.append(Problem(tkey(i, t, "latency.kind"), f"tenant {t.name} pushes latency over MQTT: {fix}"))
    return out


def _coverage(cfg: Config) -> Iterable[Problem]:
    if not cfg.tenants:
        return [Problem("tenants", "no [[tenants]]: tailguard has nothing to protect or cap", error=False)]
    if not any(t.role is Role.SENSITIVE for t in cfg.tenants):
        return [
            Problem(
                "tenants", 'no tenant has role = "sensitive": nothing has an SLO, so tailguard never acts', error=False
            )
        ]
    return []


def _outage_fit(cfg: Config) -> Iterable[Problem]:
    """A sensitive tenant whose cheapest move (a relaunch onto an instance that exists, or a warm
    hand-over's gap) is longer than its whole outage budget is never moved or resized, however far
    over its SLO it runs: legal (the budget guards its tail against outages), but an operator with
    a model that takes minutes to load should know before the tail does."""
    p = cfg.policy
    if not p.outage_budget_share or not (p.levers.placement or p.levers.mig):
        return []
    out = []
    for i, t in enumerate(cfg.tenants):
        if t.role is not Role.SENSITIVE:
            continue
        warm = t.launcher is not None and t.launcher.handover == "warm"
        cheapest = move_outage_s(MoveKind.EXISTING, t.relaunch_s, t.reconfig_s, warm, t.handover_gap_s)
        budget = p.outage_budget_share * outage_tail(t.quantile) * p.outage_budget_window_s
        if cheapest > budget:
            out.append(
                Problem(
                    tkey(i, t, "handover_gap_s" if warm else "relaunch_s"),
                    f"its cheapest move is an outage of {cheapest:g} s, longer than its whole outage budget"
                    f" ({budget:g} s per {p.outage_budget_window_s:g} s: [policy] outage_budget_share"
                    f" {p.outage_budget_share:g} x {outage_tail(t.quantile):g} of its requests): it is never moved"
                    " or resized; raise outage_budget_share or outage_budget_window_s, or give it a warm hand-over",
                    error=False,
                )
            )
    return out


def _relaunch_unset(cfg: Config) -> Iterable[Problem]:
    """A sensitive tenant that may be moved or resized with `relaunch_s` left at its default: its
    moves are priced at 5 s until the actuators measure one (or it restarts on its own), and a
    vLLM server takes tens of seconds to serve again. In the lab, relaunches four times the
    configured figure made 8 of 100 cases worse than doing nothing (docs/results.md, "A relaunch
    no shorter than the tenant's own restarts")."""
    p = cfg.policy
    if not (p.levers.placement or p.levers.mig) or cfg.host.platform == "kubernetes":  # no moves there
        return []
    return [
        Problem(
            tkey(i, t, "relaunch_s"),
            f"not set: tenant {t.name}'s moves and resizes are priced at the default {t.relaunch_s:g} s of"
            " unavailability until one is measured; set the seconds its server takes to serve again after"
            " a restart (a vLLM server: tens of seconds; `tailguard doctor` compares it with the moves"
            " measured)",
            error=False,
        )
        for i, t in enumerate(cfg.tenants)
        if t.role is Role.SENSITIVE and "relaunch_s" not in t.model_fields_set
    ]


def _reconfig_cap(cfg: Config) -> Iterable[Problem]:
    """The resize lever on with no MIG layout change allowed in any hour: legal, but the ladder's
    last rung then holds every time ("reconfiguration budget spent"), which reads as a budget
    spent rather than a lever off."""
    p = cfg.policy
    if p.levers.mig and p.max_reconfigs_per_hour == 0:
        return [
            Problem(
                "policy.max_reconfigs_per_hour",
                "0 with [policy.levers] mig = true: no MIG layout change is ever allowed, so no tenant is ever"
                " resized; set mig = false to say so, or allow 1 or more an hour",
                error=False,
            )
        ]
    return []


def _low_quantile(cfg: Config) -> Iterable[Problem]:
    """An SLO on a quantile under the median: legal, but it lets most requests run over slo_ms, and
    tailguard keeps a tail (0.9-0.999); most likely the percentile was meant the other way round
    (0.3 for 0.97, or a p50 typed as 0.05)."""
    return [
        Problem(
            tkey(i, t, "quantile"),
            f"{t.quantile:g} is below the median: the SLO lets {1.0 - t.quantile:.0%} of tenant {t.name}'s requests"
            f" take longer than {t.slo_ms:g} ms; a tail SLO is 0.9-0.999 (0.99 for a p99)",
            error=False,
        )
        for i, t in enumerate(cfg.tenants)
        if t.role is Role.SENSITIVE and t.slo_ms is not None and t.quantile < 0.5
    ]


# A source must give up this far inside the tick's deadline: what is left assembles the observation.
SOURCE_DEADLINE_SHARE = 0.8


def _slow_sources(cfg: Config) -> Iterable[Problem]:
    """A source's timeout against the daemon's deadline for a whole tick's observation (at least
    1 s; controller/signals/base.py). The sources are read together and the tick waits for the
    slowest: one that hangs past the deadline gets the whole tick skipped, every other source's
    readings with it, on every tick it hangs. Its own timeout, well inside the deadline, costs only
    its own signal."""
    deadline = observe_deadline_s(cfg.host.sample_period_s)
    room = SOURCE_DEADLINE_SHARE * deadline
    timed = [("signals.timeout_s", "an NVML, DCGM or host", cfg.signals.timeout_s)]
    timed += [
        (tkey(i, t, "latency.timeout_s"), f"tenant {t.name}'s latency", t.latency.timeout_s)
        for i, t in enumerate(cfg.tenants)
        if t.latency is not None and t.latency.kind != "mqtt"  # pushed, not read on the tick
    ]
    return [
        Problem(
            key,
            f"{timeout:g} s leaves no room in the tick's {deadline:g} s deadline (host.sample_period_s"
            f" {cfg.host.sample_period_s:g}, at least 1 s): when {what} source hangs, every tick is skipped"
            f" whole, every other signal with it; set it to {room:.2g} s or less, or lengthen sample_period_s",
            error=False,
        )
        for key, what, timeout in timed
        if timeout > room
    ]


HANG_RATIO = 10.0  # a restart launcher's readiness wait past this many relaunches warns


def _readiness(cfg: Config) -> Iterable[Problem]:
    """A launcher waits `readiness_timeout_s` for a moved tenant's new copy, then gives up and
    relaunches it where it was (actuators/moves.py). A wait shorter than the tenant's own start-up
    (`relaunch_s`) fails every move after an outage for nothing, and its move back waits the same
    way; one under twice it fails a start slowed by a cold page cache, which the controller does
    not price (a failed move records no outage to learn from). One far longer than it (restart
    hand-over) is what a new copy that hangs costs the tenant in outage."""
    p = cfg.policy
    if not (p.levers.placement or p.levers.mig):
        return []
    out = []
    for i, t in enumerate(cfg.tenants):
        if t.role is not Role.SENSITIVE or t.launcher is None:
            continue
        wait = t.launcher.readiness_timeout_s
        if wait <= t.relaunch_s:
            out.append(
                Problem(
                    tkey(i, t, "launcher.readiness_timeout_s"),
                    f"{wait:g} s is no longer than its relaunch_s ({t.relaunch_s:g} s): every move would stop it, wait"
                    " for a new copy that cannot be ready in time, then relaunch it where it was (and that wait fails"
                    " the same way); raise readiness_timeout_s above relaunch_s, to twice it or more",
                )
            )
        elif wait < 2 * t.relaunch_s:
            out.append(
                Problem(
                    tkey(i, t, "launcher.readiness_timeout_s"),
                    f"{wait:g} s is under twice its relaunch_s ({t.relaunch_s:g} s): a start slowed by a cold page"
                    " cache fails the move after an outage for nothing; twice relaunch_s or more is safer",
                    error=False,
                )
            )
        elif (
            t.launcher.handover == "restart"
            and "relaunch_s" in t.model_fields_set  # the operator's figure (the default's is doctor's to judge)
            and t.relaunch_s > 0
            and wait > HANG_RATIO * t.relaunch_s
        ):
            out.append(
                Problem(
                    tkey(i, t, "launcher.readiness_timeout_s"),
                    f"{wait:g} s is over {HANG_RATIO:g} times its relaunch_s ({t.relaunch_s:g} s): a new copy that"
                    " hangs (never ready, never exits) keeps the tenant down for all of it, where a move is priced at"
                    " its relaunch (in the lab such a failure made the run's p99: docs/results.md); if relaunch_s is"
                    " its real start-up, about four times it bounds that",
                    error=False,
                )
            )
    return out
