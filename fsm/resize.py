"""Give a victim a bigger MIG slice: plan the new layout of a GPU.

Rules: only instances that no tenant occupies (and nobody reserved) may be destroyed; the new
layout must satisfy the GPU's placement rules (fsm.mig); instances destroyed only to make room are
re-created where they still fit, so capacity is not lost needlessly. Smallest sufficient step up
the ladder first, the victim's own GPU first, then the plan that destroys the fewest free instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fsm.mig import GpuModel, Slot, is_valid, normalise, slot_range
from fsm.observation import InstanceRef, Observation
from fsm.placement import gpu_model, resize_ladder
from fsm.spec import HostSpec


@dataclass(frozen=True, slots=True)
class ResizePlan:
    gpu: str
    prev_layout: tuple[Slot, ...]
    new_layout: tuple[Slot, ...]
    target: InstanceRef
    destroyed: tuple[Slot, ...]  # free instances the plan removes for good

    def as_evidence(self) -> dict[str, object]:
        return {
            "gpu": self.gpu,
            "from_layout": [str(s) for s in self.prev_layout],
            "to_layout": [str(s) for s in self.new_layout],
            "target": str(self.target),
            "destroyed_free": [str(s) for s in self.destroyed],
        }


def plan_resize(
    spec: HostSpec,
    obs: Observation,
    current: InstanceRef,
    busy_gpus: Iterable[str],
    occupied: Iterable[InstanceRef],
) -> ResizePlan | None:
    busy = set(busy_gpus)
    occ = set(occupied)
    model = gpu_model(spec, current.gpu)
    if model is None or not model.has_profile(current.profile):
        return None
    cur_slices = model.profile(current.profile).slices
    bigger = [p for p in resize_ladder(spec, model) if p.slices > cur_slices]
    gpus = [current.gpu, *sorted(g for g in obs.gpus if g != current.gpu)]
    for prof in bigger:
        for gpu in gpus:
            g = obs.gpus.get(gpu)
            if gpu in busy or g is None or g.lost or g.layout is None:
                continue
            m = gpu_model(spec, gpu)
            if m is None or not m.has_profile(prof.name) or m.profile(prof.name).slices != prof.slices:
                continue
            plan = _plan_on(gpu, m.profile(prof.name).name, m, tuple(g.layout), current, occ)
            if plan is not None:
                return plan
    return None


def _plan_on(
    gpu: str, profile: str, model: GpuModel, layout: tuple[Slot, ...], current: InstanceRef, occ: set[InstanceRef]
) -> ResizePlan | None:
    victim_slot = current.slot if current.gpu == gpu else None
    in_use = {i.slot for i in occ if i.gpu == gpu}  # the slots of the instances in use on this GPU
    keep = [s for s in layout if s in in_use and s != victim_slot]
    # The victim's own instance is free once it has moved; keeping it lets the move be
    # make-before-break (start on the new slice while the old one still serves).
    free = [s for s in layout if s not in in_use or s == victim_slot]
    free_sorted = sorted(free)
    victim_range: set[int] | None = None  # the victim's memory slots, once needed
    best: tuple[tuple[int, int, int], Slot, list[Slot], tuple[Slot, ...]] | None = None
    for start in model.profile(profile).placements:
        new = Slot(start, profile)
        base = [*keep, new]
        if not is_valid(model, base):
            continue
        # Re-create the free instances that still fit, in their old places.
        restored: list[Slot] = []
        for s in free_sorted:
            if is_valid(model, [*base, *restored, s]):
                restored.append(s)
        destroyed = tuple(s for s in free if s not in restored and s != victim_slot)
        # Prefer a new range beside the victim's old one: no downtime for the move, no instance in
        # use destroyed; growing in place would need the victim stopped first.
        overlaps_victim = 0
        if victim_slot is not None:
            if victim_range is None:
                victim_range = set(slot_range(model, victim_slot))
            overlaps_victim = int(bool(victim_range & set(slot_range(model, new))))
        key = (overlaps_victim, len(destroyed), start)
        if best is None or key < best[0]:
            best = (key, new, restored, destroyed)
    if best is None:
        return None
    _, new, restored, destroyed = best
    return ResizePlan(
        gpu=gpu,
        prev_layout=normalise(layout),
        new_layout=normalise([*keep, new, *restored]),
        target=InstanceRef(gpu, profile, new.start),
        destroyed=destroyed,
    )


def plan_restore(
    spec: HostSpec,
    obs: Observation,
    gpu: str,
    prev_layout: tuple[Slot, ...],
    grown: InstanceRef,
    home: InstanceRef,
    occupied: Iterable[InstanceRef],
) -> tuple[Slot, ...] | None:
    """The layout that gives back a resize: drop the grown instance, restore the previous layout's
    instances that do not collide with instances in use. None if the home slot cannot come back."""
    model = gpu_model(spec, gpu)
    g = obs.gpus.get(gpu)
    if model is None or g is None or g.layout is None:
        return None
    occ = {i for i in occupied if i.gpu == gpu and i != grown}
    keep = [s for s in g.layout if InstanceRef(gpu, s.profile, s.start) in occ]
    out = list(keep)
    for s in sorted(prev_layout):
        if s in out:
            continue
        if is_valid(model, [*out, s]):
            out.append(s)
    if home.gpu == gpu and home.slot not in out:
        return None
    return normalise(out)
