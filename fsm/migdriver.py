"""A GPU's MIG profile table as its driver lists it, and how it differs from the built-in one.

Pure: the shell reads `nvidia-smi mig -lgip` / `-lgipp` (actuators/nvsmi.py), turns each row into
a DriverProfile and hands the list in; this module builds the GpuModel the decision core then uses
for that GPU (HostSpec.mig_tables) and names every difference from fsm.mig's built-in table.
Profiles are matched by the `-lgip` ID (names and GiB figures vary by driver, docs/mig-profiles.md
sections 1 and 8); geometry (placements, slots, max count) comes from the driver where it lists it.
An ID means different things on different GPUs (14 is 2g on A100/H100, 1g on RTX PRO 6000): the
built-in class of an ID is the GPU's own model's first, and where the name's compute slices still
disagree with it the name wins, with a note naming the conflict. The GPU's memory slot count is its
built-in model's, else the end of the driver's furthest placement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fsm.mig import CLASSES, MAX_MEM_SLOTS, MEM_SLOTS, GpuModel, Profile, ProfileClass

_CLASS_BY_ID = {c.lgip_id: c for c in CLASSES}
_SLICES = re.compile(r"^(\d+)g\.")
_PLAIN = re.compile(r"[0-9]{1,2}g\.[0-9]{1,4}gb")  # no +me / -me / +gfx: a ladder step


@dataclass(frozen=True, slots=True)
class DriverProfile:
    """One `-lgip` row joined with its `-lgipp` placements (starts empty: -lgipp did not list it)."""

    name: str  # "3g.20gb" (without "MIG ")
    lgip_id: int
    total: int  # Instances Total: the most of this profile the GPU holds
    gib: float
    sm: int
    dec: int
    enc: int
    jpg: int
    ofa: int
    ce: int
    starts: tuple[int, ...] = ()
    size: int = 0  # memory slots, from -lgipp


def _class_for(d: DriverProfile, notes: list[str], by_id: dict[int, ProfileClass], slots: int) -> ProfileClass | None:
    known = by_id.get(d.lgip_id)
    m = _SLICES.match(d.name)
    named = int(m[1]) if m else 0
    if known is not None and named and named != known.slices:
        notes.append(
            f"{d.name} (ID {d.lgip_id}): its name gives {named} compute slice(s) where the built-in ID"
            f" {d.lgip_id} is {known.key} ({known.slices}); the name is used"
        )
        known = None  # nor its geometry
    slices = known.slices if known is not None else named
    if slices <= 0:
        notes.append(f"{d.name} (ID {d.lgip_id}): cannot tell its compute slices from the name; left out")
        return None
    starts, size = d.starts, d.size
    if not starts or size <= 0:
        if known is None:
            notes.append(f"{d.name} (ID {d.lgip_id}): no -lgipp placements; left out")
            return None
        notes.append(f"{d.name} (ID {d.lgip_id}): no -lgipp placements; the built-in ones are used")
        starts, size = known.starts, known.mem_slots
    if any(s < 0 or s + size > slots for s in starts):
        notes.append(f"{d.name} (ID {d.lgip_id}): placements {list(starts)}:{size} exceed {slots} slots; left out")
        return None
    if known is not None:
        key, enum = known.key, known.nvml_enum
    else:
        key, enum = (f"{slices}g" if _PLAIN.fullmatch(d.name) else f"id{d.lgip_id}"), -1
    cls = ProfileClass(key, d.lgip_id, enum, slices, size, max(d.total, 1), tuple(sorted(starts)))
    return known if known == cls else cls


def _slot_count(base: GpuModel | None, profiles: Sequence[DriverProfile]) -> int:
    """The GPU's memory slots: its built-in model's, else the end of the driver's furthest placement
    (at most MAX_MEM_SLOTS; rows past it are left out; none listed: the A100/H100 sheet's)."""
    if base is not None:
        return base.mem_slots
    ends = [s + d.size for d in profiles if d.size > 0 for s in d.starts]
    return min(max(ends, default=MEM_SLOTS), MAX_MEM_SLOTS)


def model_from_driver(
    base: GpuModel | None, gpu_name: str, profiles: Sequence[DriverProfile]
) -> tuple[GpuModel, list[str]]:
    """The table in force for one GPU: the driver's rows, in its order. Returns notes on rows it
    could not use. The key stays the built-in model's, so per-model config (mig_ladder) applies."""
    notes: list[str] = []
    rows = []
    seen: set[int] = set()
    by_id = _CLASS_BY_ID if base is None else {**_CLASS_BY_ID, **{p.lgip_id: p.cls for p in base.profiles}}
    slots = _slot_count(base, profiles)
    for d in profiles:
        if d.lgip_id in seen:
            notes.append(f"{d.name} (ID {d.lgip_id}) listed twice; the first row is used")
            continue
        seen.add(d.lgip_id)
        cls = _class_for(d, notes, by_id, slots)
        if cls is not None:
            rows.append(Profile(d.name, cls, d.gib, d.sm, d.dec, d.enc, d.jpg, d.ofa, d.ce))
    if base is not None:  # a driver that lists no whole-GPU profile leaves the GPU as large
        key, name, mib, pci, whole = base.key, base.name, base.memory_mib, base.pci_device_ids, base.compute_slices
    else:
        name = gpu_name.strip()
        key = re.sub(r"[^A-Za-z0-9.]+", "-", name.removeprefix("NVIDIA ")).strip("-") or "unknown"
        mib, pci, whole = round(max((r.gib for r in rows), default=0.0) * 1024), (), 0
    return GpuModel(name, key, mib, tuple(rows), pci, slots, whole), notes


def _engines(p: Profile) -> str:
    return f"{p.dec}/{p.enc}/{p.jpg}/{p.ofa}/{p.ce}"


def _geometry(p: Profile) -> str:
    return f"{{{','.join(str(s) for s in p.placements)}}}:{p.mem_slots}"


def table_differences(builtin: GpuModel | None, driver: GpuModel) -> list[str]:
    """Every way the driver's table differs from the built-in one, one line each (empty: same)."""
    if builtin is None:
        return [f"no built-in table for {driver.name}: the driver's listing is the only one"]
    out: list[str] = []
    mine = {p.lgip_id: p for p in builtin.profiles}
    theirs = {p.lgip_id: p for p in driver.profiles}
    for pid, b in mine.items():
        if pid not in theirs:
            out.append(f"{b.name} (ID {pid}): in the built-in table, not offered by the driver")
    for pid, d in theirs.items():
        p = mine.get(pid)
        if p is None:
            out.append(f"{d.name} (ID {pid}): offered by the driver, not in the built-in table")
            continue
        fields = (
            ("name", p.name, d.name),
            ("GiB", f"{p.gib:.2f}", f"{d.gib:.2f}"),
            ("SM", p.sm, d.sm),
            ("DEC/ENC/JPG/OFA/CE", _engines(p), _engines(d)),
            ("placements", _geometry(p), _geometry(d)),
            ("max count", p.cls.max_count, d.cls.max_count),
        )
        for what, mine_v, theirs_v in fields:
            if mine_v != theirs_v:
                out.append(f"{p.name} (ID {pid}): {what} {mine_v} built-in, {theirs_v} driver")
    return out
