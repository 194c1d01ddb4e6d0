"""MIG GPU-instance profile tables and placement rules, as pure data.

Facts from docs/mig-profiles.md (captures of `nvidia-smi mig -lgip/-lgipp` and NVIDIA's MIG
user guide). An A100/H100/H200 has 8 memory slots and 7 compute slices, an RTX PRO 6000 Blackwell
12 and 4: a GPU model's counts come from its table (GpuModel.mem_slots, .compute_slices), never
from a constant. A GPU instance (GI) of a profile takes the memory slots [start, start + mem_slots)
for a start in the profile's placement set. A layout is valid iff every start is allowed, no two
slot ranges overlap and no profile exceeds its max count. The planner, the emulated nvidia-smi and
the simulator all use this one table.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MEM_SLOTS = 8  # of the A100/H100/H200 sheet (CLASSES); a model's own count is GpuModel.mem_slots
COMPUTE_SLICES = 7  # likewise; GpuModel.compute_slices
# No MIG GPU has more memory slots than this (the most known is 12, RTX PRO 6000 Blackwell): the
# bound on a start read from text (saved state) before any GPU's table is at hand.
MAX_MEM_SLOTS = 32


@dataclass(frozen=True, slots=True)
class ProfileClass:
    """A profile's geometry: CLASSES hold the one shared by every A100/H100/H200 (docs/mig-profiles.md
    section 1); other GPUs have their own (RTX_PRO_6000_CLASSES, or a driver's -lgipp)."""

    key: str  # "1g", "1g+me", "1g2", "2g", "3g", "4g", "7g"; plain "<N>g" is a ladder step
    lgip_id: int  # the ID that -lgip prints and -cgi accepts
    nvml_enum: int
    slices: int  # compute slices
    mem_slots: int
    max_count: int
    starts: tuple[int, ...]


CLASSES: tuple[ProfileClass, ...] = (
    ProfileClass("1g", 19, 0, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
    ProfileClass("1g+me", 20, 7, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
    ProfileClass("1g2", 15, 9, 1, 2, 4, (0, 2, 4, 6)),
    ProfileClass("2g", 14, 1, 2, 2, 3, (0, 2, 4)),
    ProfileClass("3g", 9, 2, 3, 4, 2, (0, 4)),
    ProfileClass("4g", 5, 3, 4, 4, 1, (0,)),
    ProfileClass("7g", 0, 4, 7, 8, 1, (0,)),
)
CLASS_BY_KEY = {c.key: c for c in CLASSES}


@dataclass(frozen=True, slots=True)
class Profile:
    """One row of a GPU model's `-lgip` table."""

    name: str  # "3g.20gb", "1g.5gb+me"
    cls: ProfileClass
    gib: float  # as -lgip prints it (current drivers)
    sm: int
    dec: int
    enc: int
    jpg: int
    ofa: int
    ce: int

    @property
    def lgip_id(self) -> int:
        return self.cls.lgip_id

    @property
    def slices(self) -> int:
        return self.cls.slices

    @property
    def mem_slots(self) -> int:
        return self.cls.mem_slots

    @property
    def placements(self) -> tuple[int, ...]:
        return self.cls.starts


@dataclass(frozen=True, slots=True)
class GpuModel:
    name: str  # as nvidia-smi prints it, e.g. "NVIDIA A100-SXM4-40GB"
    key: str  # short key used in scenario files, e.g. "A100-SXM4-40GB"
    memory_mib: int
    profiles: tuple[Profile, ...]
    pci_device_ids: tuple[int, ...] = ()
    # Memory slots of the GPU; 0: the end of its profiles' furthest placement (every table holds a
    # whole-GPU profile). Set once here, read per layout check: never recomputed per tick.
    mem_slots: int = 0
    # Compute slices of the whole GPU; 0: its largest profile's (7 on A100/H100, 4 on RTX PRO 6000).
    compute_slices: int = 0
    # Lookups already answered (ref -> Profile, or None: no such profile): the planner asks the
    # same few names thousands of times per tick. Not part of the model's value.
    _memo: dict[Any, Profile | None] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ends = [s + p.mem_slots for p in self.profiles for s in p.placements]
        slots = self.mem_slots or max(ends, default=MEM_SLOTS)
        if any(e > slots for e in ends) or any(s < 0 for p in self.profiles for s in p.placements):
            raise ValueError(f"GPU model {self.key}: a placement lies outside its {slots} memory slots")
        object.__setattr__(self, "mem_slots", slots)
        whole = self.compute_slices or max((p.slices for p in self.profiles), default=COMPUTE_SLICES)
        object.__setattr__(self, "compute_slices", whole)

    def profile(self, ref: str | int) -> Profile:
        """Look a profile up by -lgip ID, short name (3g.20gb) or full name (MIG 3g.20gb)."""
        cls = ref.__class__
        if cls is str or cls is int:  # exact types: True or 1.0 must not share 1's answer
            try:
                hit = self._memo[ref]
            except KeyError:
                hit = self._find(ref)
                if len(self._memo) < 1024:  # refs can come from observations: bounded
                    self._memo[ref] = hit
            if hit is None:
                raise KeyError(f"GPU model {self.key} has no MIG profile {ref!r}")
            return hit
        found = self._find(ref)
        if found is None:
            raise KeyError(f"GPU model {self.key} has no MIG profile {ref!r}")
        return found

    def _find(self, ref: str | int) -> Profile | None:
        for p in self.profiles:
            if isinstance(ref, int):
                if p.lgip_id == ref:
                    return p
            else:
                text = ref.strip()
                if text.startswith("MIG "):
                    text = text[4:]
                if text == p.name or (text.isascii() and text.isdigit() and int(text) == p.lgip_id):
                    return p
        return None

    def has_profile(self, ref: str | int) -> bool:
        try:
            self.profile(ref)
        except KeyError:
            return False
        return True

    def ladder(self) -> tuple[Profile, ...]:
        """The resize ladder: the standard profiles (plain "<N>g" classes) by compute slices
        (1g -> 2g -> 3g -> 4g -> 7g on A100/H100, 1g -> 2g -> 4g on RTX PRO 6000)."""
        std = [p for p in self.profiles if _PLAIN_KEY.fullmatch(p.cls.key)]
        return tuple(sorted(std, key=_slices_of))


_PLAIN_KEY = re.compile(r"[0-9]{1,2}g")


def _slices_of(p: Profile) -> int:
    return p.slices


def _rows(
    names: Sequence[str],
    gib: Sequence[float],
    sm: Sequence[int],
    engines: Sequence[str],
    keys: Sequence[str] = ("1g", "1g+me", "1g2", "2g", "3g", "4g", "7g"),
    by_key: dict[str, ProfileClass] | None = None,
) -> tuple[Profile, ...]:
    rows = []
    classes = [(by_key or CLASS_BY_KEY)[k] for k in keys]
    for cls, name, g, s, eng in zip(classes, names, gib, sm, engines, strict=True):
        dec, enc, jpg, ofa, ce = (int(x) for x in eng.split("/"))
        rows.append(Profile(name, cls, g, s, dec, enc, jpg, ofa, ce))
    return tuple(rows)


# Engines as DEC/ENC/JPG/OFA/CE; rows in -lgip order 19, 20, 15, 14, 9, 5, 0.
_A100_ENG = ("0/0/0/0/1", "1/0/1/1/1", "1/0/0/0/1", "1/0/0/0/2", "2/0/0/0/3", "2/0/0/0/4", "5/0/1/1/7")
_HOPPER_ENG = ("1/0/1/0/1", "1/0/1/1/1", "1/0/1/0/1", "2/0/2/0/2", "3/0/3/0/3", "4/0/4/0/4", "7/0/7/1/8")

A100_40GB = GpuModel(
    "NVIDIA A100-SXM4-40GB",
    "A100-SXM4-40GB",
    40960,
    _rows(
        ("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
        (4.75, 4.75, 9.62, 9.62, 19.50, 19.50, 39.25),
        (14, 14, 14, 28, 42, 56, 98),
        _A100_ENG,
    ),
    (0x20B0, 0x20B1),
)
# The one A100-PCIE-40GB listing we hold (tests/fixtures/nvidia-smi-mig-lgip_a100-pcie-40gb_r460.txt,
# driver 460.32.03) offers no 1g.10gb and no +me profile and prints 9.75 / 19.62 / 39.50 GiB where
# the SXM4 table (NVIDIA's docs, newer drivers) prints 9.62 / 19.50 / 39.25. Offline the planner
# offers only what that card is known to list; on a live host the driver's own listing wins
# (controller/mig_tables.py), which adds the other profiles where a newer driver offers them.
A100_PCIE_40GB = GpuModel(
    "NVIDIA A100-PCIE-40GB",
    "A100-PCIE-40GB",
    40960,
    _rows(
        ("1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
        (4.75, 9.75, 19.62, 19.62, 39.50),
        (14, 28, 42, 56, 98),
        ("0/0/0/0/1", "1/0/0/0/2", "2/0/0/0/3", "2/0/0/0/4", "5/0/1/1/7"),
        ("1g", "2g", "3g", "4g", "7g"),
    ),
    (0x20F1, 0x20F6),
)
A100_80GB = GpuModel(
    "NVIDIA A100-SXM4-80GB",
    "A100-SXM4-80GB",
    81920,
    _rows(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        (9.50, 9.50, 19.50, 19.50, 39.25, 39.25, 78.75),
        (14, 14, 14, 28, 42, 56, 98),
        _A100_ENG,
    ),
    (0x20B2,),
)
A100_80GB_PCIE = GpuModel("NVIDIA A100 80GB PCIe", "A100-80GB-PCIE", 81920, A100_80GB.profiles, (0x20B5,))
H100_SXM5 = GpuModel(
    "NVIDIA H100 80GB HBM3",
    "H100-80GB-HBM3",
    81559,
    _rows(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        (9.75, 9.75, 19.62, 19.62, 39.50, 39.50, 79.25),
        (16, 16, 26, 32, 60, 64, 132),
        _HOPPER_ENG,
    ),
    (0x2330,),
)
H100_PCIE = GpuModel(
    "NVIDIA H100 PCIe",
    "H100-PCIE",
    81559,
    _rows(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        (9.75, 9.75, 19.62, 19.62, 39.50, 39.50, 79.25),
        (14, 14, 14, 30, 46, 62, 114),
        _HOPPER_ENG,
    ),
    (0x2331,),
)
H100_NVL = GpuModel(
    "NVIDIA H100 NVL",
    "H100-NVL",
    95830,
    _rows(
        ("1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
        (10.75, 10.75, 21.62, 21.62, 46.38, 46.38, 93.12),
        (16, 16, 26, 32, 60, 64, 132),
        _HOPPER_ENG,
    ),
    (0x2321,),
)
H200 = GpuModel(
    "NVIDIA H200",
    "H200-141GB",
    143771,
    _rows(
        ("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
        (16.00, 16.00, 32.25, 32.25, 69.50, 69.50, 139.75),
        (16, 16, 26, 32, 60, 64, 132),
        _HOPPER_ENG,
    ),
    (0x2335,),
)

# RTX PRO 6000 Blackwell Server Edition: 12 memory slots, 4 compute slices, and profile IDs of its
# own (14 is 1g here, 2g on A100/H100; 5 is 2g, not 4g; 0 is 4g, not 7g). docs/mig-profiles.md 2.7,
# from tests/fixtures/nvidia-smi-mig-lgip(p)_rtx-pro-6000-blackwell-se_r610_kubesimplify.txt
# (driver 610.43.02). The NVML enum of these profiles is not captured: -1.
RTX_PRO_6000_CLASSES: tuple[ProfileClass, ...] = (
    ProfileClass("1g", 14, -1, 1, 3, 4, (0, 3, 6, 9)),
    ProfileClass("1g+me", 21, -1, 1, 3, 1, (0, 3, 6, 9)),
    ProfileClass("1g+gfx", 47, -1, 1, 3, 4, (0, 3, 6, 9)),
    ProfileClass("1g+me.all", 65, -1, 1, 3, 1, (0, 3, 6, 9)),
    ProfileClass("1g-me", 67, -1, 1, 3, 4, (0, 3, 6, 9)),
    ProfileClass("2g", 5, -1, 2, 6, 2, (0, 6)),
    ProfileClass("2g+gfx", 35, -1, 2, 6, 2, (0, 6)),
    ProfileClass("2g+me.all", 64, -1, 2, 6, 1, (0, 6)),
    ProfileClass("2g-me", 66, -1, 2, 6, 2, (0, 6)),
    ProfileClass("4g", 0, -1, 4, 12, 1, (0,)),
    ProfileClass("4g+gfx", 32, -1, 4, 12, 1, (0,)),
)
_RTX_NAMES = ("1g.24gb", "1g.24gb+me", "1g.24gb+gfx", "1g.24gb+me.all", "1g.24gb-me",
              "2g.48gb", "2g.48gb+gfx", "2g.48gb+me.all", "2g.48gb-me", "4g.96gb", "4g.96gb+gfx")  # fmt: skip
_RTX_ENG = ("1/1/1/0/1", "1/1/1/1/1", "1/1/1/0/1", "4/4/4/1/1", "0/0/0/0/1",
            "2/2/2/0/2", "2/2/2/0/2", "4/4/4/1/2", "0/0/0/0/2", "4/4/4/1/4", "4/4/4/1/4")  # fmt: skip
RTX_PRO_6000_SE = GpuModel(
    "NVIDIA RTX PRO 6000 Blackwell Server Edition",
    "RTX-PRO-6000-SE",
    97887,  # MiB, as CUDA reports the whole card in the same capture
    _rows(
        _RTX_NAMES,
        (23.62, 23.62, 23.62, 23.62, 23.62, 47.38, 47.38, 47.38, 47.38, 95.12, 95.12),
        (46, 46, 46, 46, 46, 94, 94, 94, 94, 188, 188),
        _RTX_ENG,
        tuple(c.key for c in RTX_PRO_6000_CLASSES),
        {c.key: c for c in RTX_PRO_6000_CLASSES},
    ),
    mem_slots=12,
)

MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        A100_40GB, A100_PCIE_40GB, A100_80GB, A100_80GB_PCIE, H100_SXM5, H100_PCIE, H100_NVL, H200, RTX_PRO_6000_SE,
    )
}  # fmt: skip


def model_by_name(name: str) -> GpuModel:
    """Find a model by its short key or by the name nvidia-smi prints."""
    text = name.strip()
    for m in MODELS.values():
        if text in (m.key, m.name) or text == m.name.removeprefix("NVIDIA "):
            return m
    raise KeyError(f"unknown GPU model {name!r}; known: {', '.join(sorted(MODELS))}")


def checked_ladder(ladder: Any) -> dict[str, list[str]]:
    """A policy's `mig_ladder` (GPU model -> profile names, smallest first) keyed by model key, or a
    ValueError saying what is wrong: an unknown model or profile (a resize would end in KeyError
    mid-run, fsm/placement.py), profiles out of order. The daemon's config ([policy] mig_ladder)
    and a scenario's [policy] both check with this."""
    if not isinstance(ladder, dict):
        raise ValueError(f"expected a table of GPU model -> list of MIG profile names, got {ladder!r}")
    out = {}
    for key, names in ladder.items():
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{key}: expected a list of MIG profile names, smallest first, got {names!r}")
        try:
            model = model_by_name(key)
            profiles = [model.profile(n) for n in names]
        except KeyError as e:
            raise ValueError(f"{key}: {e.args[0]}") from None
        slices = [p.slices for p in profiles]
        if not names or slices != sorted(set(slices)):
            raise ValueError(f"{key}: profiles must be given smallest first, each larger than the last")
        out[model.key] = list(names)
    return out


# A MIG profile's name as nvidia-smi prints it: 3g.20gb, 1g.10gb+me (the +gfx, +me.all kind too).
# Attributes after the size are comma-joined (NVIDIA go-nvlib, MigProfileInfo.String and
# parseMigProfileAttributes); a "-" before them is taken as well: a driver's name for a profile
# without an attribute that we cannot place must not fail the whole `nvidia-smi -L` listing.
PROFILE_NAME = re.compile(r"[0-9]{1,2}g\.[0-9]{1,4}gb(?:[+-][a-z][a-z0-9.]{0,15}(?:,[a-z][a-z0-9.]{0,15}){0,3})?")


class Slot(NamedTuple):
    """One GPU instance in a layout: a profile at a start memory slot. A named tuple, so layouts
    compare, hash and sort in C (by start, then profile) on every tick's hot paths."""

    start: int
    profile: str

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}"

    @staticmethod
    def parse(text: str) -> Slot:
        profile, sep, start = text.rpartition("@")
        # START as nvidia-smi prints it: ASCII digits, no leading zero. int() takes "04" and "٤"
        # too, and two names for one instance let two tenants call it home.
        if not sep or not profile or not (start.isascii() and start.isdigit()) or start != str(int(start)):
            raise ValueError(
                f"bad MIG slot {text!r}: expected PROFILE@START, e.g. 3g.20gb@4"
                " (START in ASCII digits, no leading zero)"
            )
        # Checked here, where text comes in (config, journal, scenarios), not in Slot(): that is hot.
        if not PROFILE_NAME.fullmatch(profile):
            raise ValueError(f"bad MIG slot {text!r}: PROFILE is no MIG profile name, e.g. 3g.20gb or 1g.10gb+me")
        return Slot(int(start), profile)


Layout = tuple[Slot, ...]


def slot_range(model: GpuModel, slot: Slot) -> range:
    p = model.profile(slot.profile)
    return range(slot.start, slot.start + p.mem_slots)


def layout_problems(model: GpuModel, layout: Iterable[Slot]) -> list[str]:
    """Every reason this layout is not valid on the model (empty when it is)."""
    problems: list[str] = []
    used: dict[int, Slot] = {}
    counts: Counter[str] = Counter()
    for slot in sorted(layout):
        try:
            p = model.profile(slot.profile)
        except KeyError as e:
            problems.append(str(e.args[0]))
            continue
        counts[p.name] += 1
        if slot.start not in p.placements:
            problems.append(f"{slot}: {p.name} may start only at {list(p.placements)}")
            continue
        for i in slot_range(model, slot):
            if i in used:
                problems.append(f"{slot} overlaps {used[i]} at memory slot {i}")
                break
            used[i] = slot
    for name, n in sorted(counts.items()):
        mx = model.profile(name).cls.max_count
        if n > mx:
            problems.append(f"{n} x {name} exceeds the maximum of {mx}")
    return problems


def is_valid(model: GpuModel, layout: Iterable[Slot]) -> bool:
    """not layout_problems(model, layout), without writing the reasons: every profile known, every
    start allowed, no two memory ranges overlapping, no profile above its maximum count."""
    used = 0  # memory slots taken, as bits
    counts: dict[str, int] = {}
    for slot in layout:
        p = model._memo.get(slot.profile) if slot.profile.__class__ is str else None
        if p is None:
            try:
                p = model.profile(slot.profile)
            except KeyError:
                return False
        cls = p.cls
        start = slot.start
        if start not in cls.starts:
            return False
        bits = ((1 << cls.mem_slots) - 1) << start
        if used & bits:
            return False
        used |= bits
        n = counts[p.name] = counts.get(p.name, 0) + 1
        # layout_problems' rule: the maximum of the profile its name finds (p itself, named by it)
        mx = cls.max_count if slot.profile == p.name else model.profile(p.name).cls.max_count
        if n > mx:
            return False
    return True


def normalise(layout: Iterable[Slot]) -> Layout:
    return tuple(sorted(layout))


def free_starts(model: GpuModel, layout: Iterable[Slot], profile: str) -> list[int]:
    """Starts at which one more instance of `profile` fits beside `layout`."""
    base = list(layout)
    return [s for s in model.profile(profile).placements if is_valid(model, [*base, Slot(s, profile)])]


def compute_slices(model: GpuModel, layout: Iterable[Slot]) -> int:
    return sum(model.profile(s.profile).slices for s in layout)
