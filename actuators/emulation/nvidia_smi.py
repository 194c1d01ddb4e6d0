"""Emulated `nvidia-smi` for the MIG commands tailguard uses, backed by a JSON state file.

It enforces the real profile tables and placement rules of each GPU model (fsm.mig, the single
source of truth), and prints the formats and messages of real captures (docs/mig-profiles.md sections
3-5 and 2.7, tests/fixtures): the 55-column -lgi, 70-column -lci, 79-column -lgip tables (-lgi
and -lgip two columns wider where a profile's name needs it, as on the RTX PRO 6000), `-lgipp`
lines, `-L` with MIG devices in GI order, the per-object success lines, `Unable to ...: <NVML
error>` plus a `Failed to ...` summary on failure (errors on stderr), exit 6 for "Not Found".
GI IDs, default CI profiles and the starts `-cgi` picks follow the GPU's model: its memory slots
(8 on A100/H100/H200, 12 on RTX PRO 6000 Blackwell) and the geometry of its profiles.
Exit codes the captures do not show (Insufficient Resources, In use) are 255 here.

State (env TAILGUARD_NVSMI_STATE): {"gpus": [{"index", "model", "uuid", "mig", "gis": [{"id",
"profile", "start", "processes": [pids], "cis": [{"id", "profile_id", "uuid"}]}]}], "faults": [...]}.
A GPU may also carry "driver" (the version `--query-gpu=...,driver_version` prints; default
"emulated"), "listing" (the model key whose built-in rows this driver lists instead of its own, e.g.
"A100-SXM4-40GB" for an A100-PCIE-40GB under a driver that offers all seven profiles), "offer" (the
-lgip IDs it lists, e.g. [19, 14, 9, 5, 0]; default: all) and "gib" ({"14": 9.75}: the GiB -lgip
prints per ID): then -lgip/-lgipp list that driver's table and -cgi refuses a profile it
does not offer with "Invalid Argument", as the real tool does for an unsupported profile. A
top-level "topo" holds the text `nvidia-smi topo -m` prints (a capture from tests/fixtures).
A GI with processes cannot be destroyed ("In use by another client"), nor can its CI.
Faults: {"match": "-cgi", "mode": "hang" | "exit" | "garbage", "seconds": 60, "code": 3,
"times": 1}: applies to commands whose argv contains `match`; `times` < 0 means forever.
`-cgi ... -C` runs in two steps as the driver's does (GPU instance, then compute instance, each
saved); env TAILGUARD_NVSMI_BETWEEN stops or delays it in between.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from actuators.emulation import NVSMI_STATE_ENV
from actuators.emulation.statefile import locked
from fsm.mig import CLASS_BY_KEY, GpuModel, Profile, Slot, free_starts, is_valid, model_by_name

# Default compute-instance profile per GI class of the A100/H100/H200 geometry (fsm.mig.CLASSES), as
# `-C` creates it (docs/mig-profiles.md section 4).
DEFAULT_CI = {"1g": 0, "1g+me": 0, "1g2": 7, "2g": 1, "3g": 2, "4g": 3, "7g": 4}
# Other geometries: the CI profile of as many slices as the GI has (NVML's compute-instance profile
# enum: 1, 2, 3, 4, 7, 8, 6 slices). The RTX PRO 6000 captures show 1g -> 0 and 2g -> 1 (section 2.7).
CI_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
# Where the driver puts a GI of the A100/H100/H200 geometry when no start is given (observed, section 3).
AUTO_ORDER = {"1g": (6, 4, 5, 0, 1, 2, 3), "1g+me": (6, 4, 5, 0, 1, 2, 3), "1g2": (6, 4, 2, 0), "2g": (4, 2, 0),
              "3g": (4, 0), "4g": (0,), "7g": (0,)}  # fmt: skip
# Other geometries: the lowest free start first, as the RTX PRO 6000 captures show (`-cgi 1g.24gb x4`
# gave starts 0, 3, 6, 9; `-cgi 2g.48gb,1g.24gb,1g.24gb` gave 0, 6, 9).
# The Name column of -lgi/-lgip: 18 wide, wider where a profile's name needs it (RTX PRO 6000's
# "MIG 1g.24gb+me.all" has 20: the whole table two columns wider, section 2.7).
NAME_WIDTH = 18

EXIT_OK, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OTHER = 0, 2, 6, 255
EXIT_KILLED = 137  # what a shell reports for a SIGKILLed command
# Set to "exit" (stop there, as if killed) or to seconds to sleep: between the two steps of a
# `-cgi ... -C`, after the GPU instance is saved and before its compute instance is created.
BETWEEN_ENV = "TAILGUARD_NVSMI_BETWEEN"

_LGI_HEAD = (
    "+-------------------------------------------------------+\n"
    "| GPU instances:                                        |\n"
    "| GPU   Name             Profile  Instance   Placement  |\n"
    "|                          ID       ID       Start:Size |\n"
    "|=======================================================|\n"
)
_LGI_SEP = "+-------------------------------------------------------+\n"
_LCI_HEAD = (
    "+--------------------------------------------------------------------+\n"
    "| Compute instances:                                                 |\n"
    "| GPU     GPU       Name             Profile   Instance   Placement  |\n"
    "|       Instance                       ID        ID       Start:Size |\n"
    "|         ID                                                         |\n"
    "|====================================================================|\n"
)
_LCI_SEP = "+--------------------------------------------------------------------+\n"
_LGIP_HEAD = (
    "+-----------------------------------------------------------------------------+\n"
    "| GPU instance profiles:                                                      |\n"
    "| GPU   Name             ID    Instances   Memory     P2P    SM    DEC   ENC  |\n"
    "|                              Free/Total   GiB              CE    JPEG  OFA  |\n"
    "|=============================================================================|\n"
)
_LGIP_SEP = "+-----------------------------------------------------------------------------+\n"


class Fail(Exception):
    def __init__(self, code: int, stderr: str, stdout: str = "") -> None:
        super().__init__(stderr)
        self.code = code
        self.stderr = stderr
        self.stdout = stdout


def _model(g: dict[str, Any]) -> GpuModel:
    """The profile table this emulated GPU's driver lists (see "offer" and "gib" above)."""
    m = model_by_name(g["model"])
    offer, gib, listing = g.get("offer"), g.get("gib") or {}, g.get("listing")
    if offer is None and not gib and listing is None:
        return m
    rows = tuple(
        replace(p, gib=float(gib.get(str(p.lgip_id), p.gib)))
        for p in model_by_name(listing or g["model"]).profiles
        if offer is None or p.lgip_id in offer
    )
    return replace(m, profiles=rows)


def _shared_geometry(p: Profile) -> bool:
    """True for a profile of the A100/H100/H200 geometry (8 memory slots, 7 slices: fsm.mig.CLASSES)."""
    return CLASS_BY_KEY.get(p.cls.key) is p.cls


def default_ci(p: Profile) -> int:
    """The compute-instance profile ID `-C` gives a GI of this profile."""
    return DEFAULT_CI[p.cls.key] if _shared_geometry(p) else CI_BY_SLICES[p.slices]


def auto_order(p: Profile) -> tuple[int, ...]:
    """The starts the driver tries, in order, for a GI of this profile given without a start."""
    return AUTO_ORDER[p.cls.key] if _shared_geometry(p) else tuple(sorted(p.placements))


def name_width(models: list[GpuModel]) -> int:
    """The Name column's width in -lgi/-lgip: 18, or two more than the longest "MIG <profile>"."""
    return max([NAME_WIDTH] + [len(p.name) + 6 for m in models for p in m.profiles])


def _widen(text: str, extra: int) -> str:
    """A table's head or border made `extra` columns wider after the Name column (column 25)."""
    if not extra:
        return text
    out = []
    for ln in text.splitlines(keepends=True):
        fill = "-" if ln.startswith("+") else "=" if ln.startswith("|=") else " "
        out.append(ln[:25] + fill * extra + ln[25:])
    return "".join(out)


def gpu_uuid(index: int, seed: str = "") -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"tailguard-emu/{seed}/gpu/{index}"))


def new_gpu(index: int, model: str, layout: tuple[Slot, ...] = (), seed: str = "") -> dict[str, Any]:
    """A GPU entry for a state file, with its layout created (each GI with its default CI)."""
    m = model_by_name(model)
    g: dict[str, Any] = {"index": index, "model": m.key, "uuid": gpu_uuid(index, seed), "mig": True, "gis": [],
                         "serial": 0}  # fmt: skip
    for s in layout:
        _create(g, m, m.profile(s.profile), s.start, with_ci=True)
    return g


def new_state(models: list[str], layouts: dict[int, tuple[Slot, ...]] | None = None, seed: str = "") -> dict[str, Any]:
    layouts = layouts or {}
    return {"gpus": [new_gpu(i, m, layouts.get(i, ()), seed) for i, m in enumerate(models)], "faults": []}


def layout_of(g: dict[str, Any]) -> tuple[Slot, ...]:
    m = _model(g)
    return tuple(sorted(Slot(gi["start"], m.profile(gi["profile"]).name) for gi in g["gis"]))


def _gi_id(g: dict[str, Any], m: GpuModel, p: Profile, start: int) -> int:
    # Observed GI id ranges by size (section 3): the whole GPU -> 0, a half -> 1-2, a quarter -> 3-6,
    # an eighth -> 7-14 (A100/H100: 7g, 4 slots, 2, 1; RTX PRO 6000: 12, 6, 3 slots, section 2.7).
    base = m.mem_slots // p.mem_slots - 1
    cand = base + start // p.mem_slots
    used = {gi["id"] for gi in g["gis"]}
    while cand in used:
        cand += 1
    return cand


def _create(g: dict[str, Any], m: GpuModel, p: Profile, start: int, with_ci: bool) -> dict[str, Any]:
    gi = {"id": _gi_id(g, m, p, start), "profile": p.name, "start": start, "processes": [], "cis": []}
    g["gis"].append(gi)
    if with_ci:
        _create_ci(g, gi, m)
    return gi


def _create_ci(g: dict[str, Any], gi: dict[str, Any], m: GpuModel) -> dict[str, Any]:
    p = m.profile(gi["profile"])
    g["serial"] = g.get("serial", 0) + 1
    ci_id = min(set(range(8)) - {c["id"] for c in gi["cis"]})
    u = "MIG-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{g['uuid']}/{gi['id']}/{ci_id}/{g['serial']}"))
    ci = {"id": ci_id, "profile_id": default_ci(p), "uuid": u}
    gi["cis"].append(ci)
    return ci


def ci_name(p: Profile) -> str:
    # The default CI uses all of its GI's slices, so it is named like the GI; the +me suffix is dropped.
    return p.name.removesuffix("+me")


def _gi_sort_key(m: GpuModel, gi: dict[str, Any]) -> tuple[int, int]:
    # -lgi lists smaller profiles first in -lgip order, then by GI id (section 3).
    order = [p.name for p in m.profiles]
    return (order.index(gi["profile"]), gi["id"])


# ---------------------------------------------------------------- output formats


def fmt_lgi(gpus: list[dict[str, Any]]) -> str:
    rows = []
    models = [_model(g) for g in gpus]
    w = name_width(models)
    for g, m in zip(gpus, models, strict=True):
        for gi in sorted(g["gis"], key=lambda x: _gi_sort_key(m, x)):
            p = m.profile(gi["profile"])
            place = f"{gi['start']}:{p.mem_slots}"
            rows.append(f"|{g['index']:>4}  {'MIG ' + p.name:<{w}}{p.lgip_id:>4}{gi['id']:>9}{place:>13}     |\n")
    sep = _widen(_LGI_SEP, w - NAME_WIDTH)
    return _widen(_LGI_HEAD, w - NAME_WIDTH) + sep.join(rows) + sep


def fmt_lci(gpus: list[dict[str, Any]], gi_filter: int | None = None) -> str:
    rows = []
    for g in gpus:
        m = _model(g)
        for gi in sorted(g["gis"], key=lambda x: _gi_sort_key(m, x)):
            if gi_filter is not None and gi["id"] != gi_filter:
                continue
            p = m.profile(gi["profile"])
            for ci in sorted(gi["cis"], key=lambda c: c["id"]):
                place = f"0:{p.slices}"
                rows.append(
                    f"|{g['index']:>4}{gi['id']:>7}       {'MIG ' + ci_name(p):<19}{ci['profile_id']:>3}"
                    f"{ci['id']:>10}{place:>13}     |\n"
                )
    return _LCI_HEAD + _LCI_SEP.join(rows) + _LCI_SEP


def fmt_lgip(g: dict[str, Any]) -> str:
    m = _model(g)
    w = name_width([m])
    layout = layout_of(g)
    rows = []
    for p in m.profiles:
        n = sum(1 for s in layout if s.profile == p.name)
        free = min(len(free_starts(m, layout, p.name)), max(p.cls.max_count - n, 0))
        ft = f"{free}/{p.cls.max_count}"
        rows.append(
            f"|{g['index']:>4}  {'MIG ' + p.name:<{w}}{p.lgip_id:>2}{ft:>8}{p.gib:>13.2f}{'No':>8}     "
            f"{p.sm:<7}{p.dec:<6}{p.enc:<4}|\n"
            f"|{'':{w + 42}}{p.ce:>2}{p.jpg:>6}{p.ofa:>6}   |\n"
        )
    sep = _widen(_LGIP_SEP, w - NAME_WIDTH)
    return _widen(_LGIP_HEAD, w - NAME_WIDTH) + sep.join(rows) + sep


def fmt_lgipp(g: dict[str, Any]) -> str:
    m = _model(g)
    out = []
    for p in m.profiles:
        starts = ",".join(str(s) for s in p.placements)
        word = "Placements:" if len(p.placements) > 1 else "Placement :"
        out.append(f"GPU {g['index']:>2} Profile ID {p.lgip_id:>2} {word} {{{starts}}}:{p.mem_slots}\n")
    return "".join(out)


QUERY_FIELDS = {"index", "name", "driver_version", "uuid"}


def fmt_query(gpus: list[dict[str, Any]], args: list[str]) -> str:
    """`--query-gpu=F,... --format=csv,noheader` for the few fields tailguard asks for."""
    fields = args[0].split("=", 1)[1].split(",")
    if "--format=csv,noheader" not in args or not set(fields) <= QUERY_FIELDS:
        raise Fail(EXIT_INVALID, f"emulated nvidia-smi: unsupported query {args!r}\n")
    out = []
    for g in gpus:
        vals = {"index": str(g["index"]), "name": _model(g).name, "driver_version": g.get("driver", "emulated"),
                "uuid": g["uuid"]}  # fmt: skip
        out.append(", ".join(vals[f] for f in fields) + "\n")
    return "".join(out)


def fmt_list(gpus: list[dict[str, Any]]) -> str:
    out = []
    for g in gpus:
        m = _model(g)
        out.append(f"GPU {g['index']}: {m.name} (UUID: {g['uuid']})\n")
        n = 0
        for gi in sorted(g["gis"], key=lambda x: x["id"]):
            p = m.profile(gi["profile"])
            for ci in sorted(gi["cis"], key=lambda c: c["id"]):
                out.append(f"  MIG {ci_name(p):<11} Device {n:>2}: (UUID: {ci['uuid']})\n")
                n += 1
    return "".join(out)


# ---------------------------------------------------------------- commands


def _select(state: dict[str, Any], index: int | None) -> list[dict[str, Any]]:
    gpus = state.get("gpus", [])
    if index is None:
        return list(gpus)
    sel = [g for g in gpus if g["index"] == index]
    if not sel:
        raise Fail(EXIT_INVALID, f"No GPU with index {index} found.\n")  # wording not captured
    return sel


def _lookup_profile(m: GpuModel, text: str) -> Profile | None:
    t = text.strip()
    try:
        return m.profile(int(t)) if t.isdecimal() else m.profile(t)
    except KeyError:
        return None


def cmd_cgi(g: dict[str, Any], spec: str, with_ci: bool) -> tuple[str, str, int]:
    m = _model(g)
    out: list[str] = []
    idx = g["index"]
    for item in spec.split(","):
        typed, _, start_s = item.partition(":")
        p = _lookup_profile(m, typed)
        err = ""
        start = -1
        if p is None or (start_s and not start_s.strip().isdecimal()):
            err = "Invalid Argument"
        else:
            layout = layout_of(g)
            n = sum(1 for s in layout if s.profile == p.name)
            if start_s:
                start = int(start_s)
                if start not in p.placements:
                    err = "Invalid Argument"
                elif not is_valid(m, [*layout, Slot(start, p.name)]):
                    err = "Insufficient Resources"
            else:
                fits = set(free_starts(m, layout, p.name)) if n < p.cls.max_count else set()
                order = [s for s in auto_order(p) if s in fits]
                if order:
                    start = order[0]
                else:
                    err = "Insufficient Resources"
            if not err and g.get("busy"):
                err = "In use by another client"  # a process holds the whole GPU (section 7, caveat 3)
        if err:
            e = f"Unable to create a GPU instance on GPU {idx:>2} using profile {typed}: {err}\n"
            e += f"Failed to create GPU instances: {err}\n"
            return "".join(out), e, EXIT_INVALID if err == "Invalid Argument" else EXIT_OTHER
        assert p is not None
        gi = _create(g, m, p, start, with_ci=False)
        out.append(f"Successfully created GPU instance ID {gi['id']:>2} on GPU {idx:>2} using profile MIG {p.name} "
                   f"(ID {p.lgip_id:>2})\n")  # fmt: skip
        if with_ci:
            ci = _create_ci(g, gi, m)
            out.append(
                f"Successfully created compute instance ID {ci['id']:>2} on GPU {idx:>2} GPU instance ID "
                f"{gi['id']:>2} using profile MIG {ci_name(p)} (ID {ci['profile_id']:>2})\n"
            )
    return "".join(out), "", EXIT_OK


def _gis(g: dict[str, Any], gi_id: int | None) -> list[dict[str, Any]]:
    return [gi for gi in sorted(g["gis"], key=lambda x: x["id"]) if gi_id is None or gi["id"] == gi_id]


def cmd_cci(g: dict[str, Any], gi_id: int | None) -> tuple[str, str, int]:
    m = _model(g)
    out: list[str] = []
    for gi in _gis(g, gi_id):
        if gi["cis"]:
            e = f"Unable to create a compute instance on GPU {g['index']:>2} GPU instance ID {gi['id']:>2}"
            e += ": Insufficient Resources\nFailed to create compute instances: Insufficient Resources\n"
            return "".join(out), e, EXIT_OTHER
        ci = _create_ci(g, gi, m)
        p = m.profile(gi["profile"])
        out.append(
            f"Successfully created compute instance ID {ci['id']:>2} on GPU {g['index']:>2} GPU instance ID "
            f"{gi['id']:>2} using profile MIG {ci_name(p)} (ID {ci['profile_id']:>2})\n"
        )
    if not out:
        return "", "No GPU instances found: Not Found\n", EXIT_NOT_FOUND
    return "".join(out), "", EXIT_OK


def cmd_dci(g: dict[str, Any], gi_id: int | None, ci_id: int | None) -> tuple[str, str, int]:
    out: list[str] = []
    err: list[str] = []
    idx = g["index"]
    targets = [(gi, ci) for gi in _gis(g, gi_id) for ci in list(gi["cis"]) if ci_id is None or ci["id"] == ci_id]
    if not targets:
        return "", "No compute instances found: Not Found\n", EXIT_NOT_FOUND
    for gi, ci in targets:  # goes on after a failure (A100 capture)
        if gi["processes"]:
            err.append(f"Unable to destroy compute instance ID {ci['id']:>2} from GPU {idx:>2} GPU instance ID "
                       f"{gi['id']:>2}: In use by another client\n"
                       "Failed to destroy compute instances: In use by another client\n")  # fmt: skip
            continue
        gi["cis"].remove(ci)
        out.append(f"Successfully destroyed compute instance ID {ci['id']:>2} from GPU {idx:>2} GPU instance ID "
                   f"{gi['id']:>2}\n")  # fmt: skip
    return "".join(out), "".join(err), EXIT_OTHER if err else EXIT_OK


def cmd_dgi(g: dict[str, Any], gi_id: int | None) -> tuple[str, str, int]:
    out: list[str] = []
    idx = g["index"]
    targets = _gis(g, gi_id)
    if not targets:
        return "", "No GPU instances found: Not Found\n", EXIT_NOT_FOUND
    for gi in targets:  # stops at the first failure
        if gi["processes"] or gi["cis"]:
            e = f"Unable to destroy GPU instance ID {gi['id']:>2} from GPU {idx:>2}: In use by another client\n"
            e += "Failed to destroy GPU instances: In use by another client\n"
            return "".join(out), e, EXIT_OTHER
        g["gis"].remove(gi)
        out.append(f"Successfully destroyed GPU instance ID {gi['id']:>2} from GPU {idx:>2}\n")
    return "".join(out), "", EXIT_OK


def _opt(args: list[str], name: str) -> str | None:
    if name in args:
        i = args.index(name)
        if i + 1 >= len(args):
            raise Fail(EXIT_INVALID, f"Option {name} requires a value.\n")  # wording not captured
        return args[i + 1]
    return None


def _int_opt(args: list[str], name: str) -> int | None:
    v = _opt(args, name)
    if v is None:
        return None
    if not v.isdecimal():
        raise Fail(EXIT_INVALID, f"Invalid value {v!r} for {name}.\n")
    return int(v)


def dispatch(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    if args == ["-L"]:
        return fmt_list(state.get("gpus", [])), "", EXIT_OK
    if args == ["topo", "-m"]:  # the state holds a captured matrix ("topo"), as the real tool prints it
        if not state.get("topo"):
            raise Fail(EXIT_INVALID, "emulated nvidia-smi: no topology matrix in the state file\n")
        return str(state["topo"]), "", EXIT_OK
    if args[:1] and args[0].startswith("--query-gpu="):
        return fmt_query(state.get("gpus", []), args), "", EXIT_OK
    if not args or args[0] != "mig":
        raise Fail(EXIT_INVALID, f"emulated nvidia-smi: unsupported arguments {args!r}\n")
    a = args[1:]
    index = _int_opt(a, "-i")
    gpus = _select(state, index)
    if any(not g.get("mig", True) for g in gpus):
        return "", "No MIG-enabled devices found.\n", EXIT_NOT_FOUND
    if "-lgi" in a:
        if not any(g["gis"] for g in gpus):
            return "", "No GPU instances found: Not Found\n", EXIT_NOT_FOUND
        return fmt_lgi(gpus), "", EXIT_OK
    if "-lci" in a:
        gi_f = _int_opt(a, "-gi")
        if not any(gi["cis"] for g in gpus for gi in g["gis"] if gi_f is None or gi["id"] == gi_f):
            return "", "No compute instances found: Not Found\n", EXIT_NOT_FOUND
        return fmt_lci(gpus, gi_f), "", EXIT_OK
    if "-lgip" in a:
        return "".join(fmt_lgip(g) for g in gpus), "", EXIT_OK
    if "-lgipp" in a:
        return "".join(fmt_lgipp(g) for g in gpus), "", EXIT_OK
    outs, errs, code = [], [], EXIT_OK
    for g in gpus:
        if "-cgi" in a:
            spec = _opt(a, "-cgi") or ""
            o, e, c = cmd_cgi(g, spec, with_ci="-C" in a)
        elif "-cci" in a:
            o, e, c = cmd_cci(g, _int_opt(a, "-gi"))
        elif "-dci" in a:
            o, e, c = cmd_dci(g, _int_opt(a, "-gi"), _int_opt(a, "-ci"))
        elif "-dgi" in a:
            o, e, c = cmd_dgi(g, _int_opt(a, "-gi"))
        else:
            raise Fail(EXIT_INVALID, f"emulated nvidia-smi: unsupported mig arguments {a!r}\n")
        outs.append(o)
        errs.append(e)
        code = code or c
    return "".join(outs), "".join(errs), code


def _fault(state: dict[str, Any], argv: list[str]) -> dict[str, Any] | None:
    for f in state.get("faults", []):
        if f.get("match", "") in " ".join(argv) and f.get("times", -1) != 0:
            if f.get("times", -1) > 0:
                f["times"] -= 1
            return dict(f)
    return None


_CREATED_GI = re.compile(r"^Successfully created GPU instance ID\s+(\d+) on GPU\s+(\d+) ")


def _cgi_two_steps(path: str, argv: list[str]) -> tuple[str, str, int]:
    """`-cgi ... -C` as the driver does it: the GPU instances first (saved), then their compute
    instances (saved again). BETWEEN_ENV stops the command in between, so a test reaches the
    state a kill there leaves: a GPU instance without its compute instance."""
    with locked(path) as state:
        try:
            out, err, code = dispatch(state, [a for a in argv if a != "-C"])
        except Fail as f:
            return f.stdout, f.stderr, f.code
    made = [(int(m[2]), int(m[1])) for ln in out.splitlines() if (m := _CREATED_GI.match(ln))]
    between = os.environ.get(BETWEEN_ENV, "")
    if made and between == "exit":
        return "", "", EXIT_KILLED  # as if killed here: no output, the GPU instances stay
    if made and between:
        time.sleep(float(between))
    lines = []
    with locked(path) as state:
        by_index = {g["index"]: g for g in state.get("gpus", [])}
        for gpu, gi_id in made:
            g = by_index[gpu]
            gi = next((x for x in g["gis"] if x["id"] == gi_id), None)
            if gi is None or gi["cis"]:  # destroyed or completed by someone else meanwhile
                lines.append("")
                continue
            model = _model(g)
            p = model.profile(gi["profile"])
            ci = _create_ci(g, gi, model)
            lines.append(
                f"Successfully created compute instance ID {ci['id']:>2} on GPU {gpu:>2} GPU instance ID "
                f"{gi_id:>2} using profile MIG {ci_name(p)} (ID {ci['profile_id']:>2})\n"
            )
    merged = []
    for ln in out.splitlines(keepends=True):  # each GPU instance's line, then its compute instance's
        merged.append(ln)
        if _CREATED_GI.match(ln):
            merged.append(lines.pop(0))
    return "".join(merged), err, code


def main(argv: list[str]) -> int:
    path = os.environ.get(NVSMI_STATE_ENV)
    if not path:
        sys.stderr.write(f"emulated nvidia-smi: set {NVSMI_STATE_ENV} to the state file\n")
        return EXIT_OTHER
    with locked(path) as state:
        fault = _fault(state, argv)
        two_steps = fault is None and "-cgi" in argv and "-C" in argv
        if fault is None and not two_steps:
            try:
                out, err, code = dispatch(state, argv)
            except Fail as f:
                out, err, code = f.stdout, f.stderr, f.code
    if two_steps:
        out, err, code = _cgi_two_steps(path, argv)
    if fault is not None:
        mode = fault.get("mode")
        if mode == "hang":
            time.sleep(float(fault.get("seconds", 3600)))
            return EXIT_OTHER
        if mode == "garbage":
            sys.stdout.write("\x1b[31m#@!% segfault?? 0xdeadbeef\n|||| ---- ||||\n")
            return EXIT_OK
        sys.stderr.write(str(fault.get("message", "Unknown Error")) + "\n")
        return int(fault.get("code", EXIT_OTHER))
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
