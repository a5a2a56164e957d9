"""XID events as the NVIDIA driver writes them in the kernel log, and what each one asks of an operator.

The driver logs an XID as `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.`; the kernel log
adds its own prefix (dmesg `[secs]` or `[ctime]`, journald/syslog `Mon DD hh:mm:ss host kernel:`, /dev/kmsg
`pri,seq,usecs,flags;`). Forms read here, all seen in real logs (tests/unit/real_logs/xid/):

- `NVRM: Xid (PCI:0000:01:00): 13, ...` and, on a MIG GPU, `NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, ...`
  (also with ` GPU-CI:02`);
- the older form without `PCI:`: `NVRM: Xid (0000:03:00): 13, ...`;
- a message wrapped onto an indented next line (journald, the driver's own multi-line messages);
- "GPU ... has fallen off the bus" in `NVRM:` lines with no Xid line at all (newer drivers, over up to three lines
  `The NVIDIA GPU 0000:b3:00.0` / `(PCI ID: ...) installed in this system has` / `fallen off the bus ...`): XID 79;
- `caused by previous Xid N` in an XID 45 line: XID N happened on that GPU.

What an XID asks for comes from NVIDIA's XID catalogue (xid_catalogue.json: the resolution bucket of every XID),
overridden by the driver's own words where it says more: XID 154 names the recovery action it wants
(`GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)`), `RST: Yes` asks for a GPU reset and `D-RST: Yes`
for a drain and reset, and NVLink XIDs 144-150 say `Fatal` or `Nonfatal`. docs/verdicts.md#xid-buckets has the
table. Parsing never raises: what it cannot read it ignores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dcforge.findings import Action, Severity
from dcforge.gpu.readings import XidEvent

CATALOGUE_PATH = Path(__file__).with_name("xid_catalogue.json")
XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.\d)?"
                      r"(?P<mig>[^)]*)\): (?P<xid>\d+)(?:,\s*(?P<message>.*))?")
_KMSG_DICT = re.compile(r"^\s+[A-Z_]+=")  # /dev/kmsg's `KEY=value` lines after a record, not its message
_CAUSED_BY = re.compile(r"caused by previous Xid (?P<xid>\d+)")
_FALLEN = re.compile(r"fallen off the bus", re.IGNORECASE)
_NVRM_GPU = re.compile(r"NVRM: (?:The NVIDIA )?GPU (?:at PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})")
_RECOVERY = re.compile(r"recovery action changed from .*? to 0x[0-9a-fA-F]+ \((?P<action>[^)]*)\)", re.IGNORECASE)
_RST = re.compile(r"\bRST: (?P<rst>Yes|No)\b")
_D_RST = re.compile(r"\bD-RST: (?P<drst>Yes|No)\b")
FALLEN_OFF_THE_BUS = 79
RECOVERY_ACTION_CHANGED = 154
NVLINK5_XIDS = range(144, 151)
DBE = 48
ROW_REMAP_XIDS = (63, 64)


@dataclass(frozen=True)
class XidRule:
    xid: int
    mnemonic: str
    description: str
    bucket: str
    action: Action
    fails_node: bool


@lru_cache(maxsize=1)
def catalogue() -> dict[int, XidRule]:
    """Every XID of NVIDIA's catalogue with its bucket and dcforge's action for that bucket."""
    document = json.loads(CATALOGUE_PATH.read_text())
    buckets = document["bucket_actions"]
    return {int(number): XidRule(int(number), entry["mnemonic"], entry["description"], entry["bucket"],
                                 Action(buckets[entry["bucket"]]["action"]), buckets[entry["bucket"]]["fails_node"])
            for number, entry in document["xids"].items()}


def pci_device(bus_id: str) -> str:
    """`00000000:3B:00.0` (NVML) and `0000:3b:00` (kernel log) -> `0000:3b:00`: domain, bus, device."""
    parts = bus_id.strip().lower().split(":")
    domain, bus, device = parts if len(parts) == 3 else ["0", *parts[-2:]] if len(parts) >= 2 else ["0", "0", parts[0]]
    try:
        return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(device.split('.')[0], 16):02x}"
    except ValueError:
        return bus_id.strip().lower()


def parse_xid_lines(text: str) -> list[XidEvent]:
    """Every XID in kernel-log text (any prefix, any of the forms in the module docstring)."""
    events: list[XidEvent] = []
    lines = str(text).splitlines()
    last_gpu = ""
    for index, line in enumerate(lines):
        if match := XID_LINE.search(line):
            message = (match["message"] or "").strip()
            for follow in lines[index + 1:index + 3]:  # a wrapped message continues on indented lines
                if follow[:1].isspace() and "NVRM: Xid" not in follow and not _KMSG_DICT.match(follow):
                    message = f"{message} {follow.strip()}"
                else:
                    break
            events.append(XidEvent(int(match["xid"]), match["pci"], message, "kernel log"))
            if caused := _CAUSED_BY.search(message):
                events.append(XidEvent(int(caused["xid"]), match["pci"], f"named by XID {match['xid']}: {message}",
                                       "kernel log"))
            continue
        if gpu := _NVRM_GPU.search(line):
            last_gpu = gpu["pci"]
        if "NVRM" in line and _FALLEN.search(line) and last_gpu and not any(
                e.xid == FALLEN_OFF_THE_BUS and pci_device(e.pci_bus_id) == pci_device(last_gpu) for e in events):
            events.append(XidEvent(FALLEN_OFF_THE_BUS, last_gpu, " ".join(line.split("NVRM:")[-1].split()),
                                   "kernel log"))
    return events


@dataclass(frozen=True)
class XidJudgement:
    severity: Severity
    action: Action
    why: str
    """What decided: the catalogue's bucket, or the driver's own words."""


def judge_xid(event: XidEvent, same_gpu: frozenset[int] = frozenset()) -> XidJudgement:
    """What one XID asks for; `same_gpu` are the other XIDs seen on the same GPU (XID 48 with 63/64 is a drain)."""
    rule = catalogue().get(event.xid)
    message = event.message or ""
    if event.xid == RECOVERY_ACTION_CHANGED and (named := _RECOVERY.search(message)):
        return _recovery_action(named["action"])
    if rule is None:
        return XidJudgement(Severity.FAIL, Action.CONTACT_VENDOR, f"XID {event.xid} is not in NVIDIA's catalogue")
    action, fails, why = rule.action, rule.fails_node, f"catalogue bucket {rule.bucket}"
    if event.xid in NVLINK5_XIDS and re.search(r"\bNonfatal\b", message, re.IGNORECASE):
        action, fails, why = Action.CHECK_FABRIC, False, "the driver reports it Nonfatal"
    if event.xid == DBE and same_gpu.intersection(ROW_REMAP_XIDS):
        action, fails, why = (Action.DRAIN_AND_SERVICE, True,
                              "catalogue WORKFLOW_XID_48: with XID 63/64, drain and reset")
    if (drst := _D_RST.search(message)) and drst["drst"] == "Yes":
        action, fails, why = Action.DRAIN_AND_SERVICE, True, "the driver says D-RST: Yes"
    elif (rst := _RST.search(message)) and rst["rst"] == "Yes" and not fails:
        action, fails, why = Action.RESET_GPU, True, "the driver says RST: Yes"
    elif (rst := _RST.search(message)) and rst["rst"] == "Yes":
        why += ", and the driver says RST: Yes"
    severity = Severity.FAIL if fails else Severity.WARN if action is not Action.NONE else Severity.INFO
    return XidJudgement(severity, action, why)


def _recovery_action(named: str) -> XidJudgement:
    """XID 154's own recovery action (`None`, `GPU Reset Required`, `PF FLR`, `Node Reboot Required`,
    `OS Reboot`, `Drain and Reset`, `Drain P2P`)."""
    words = named.lower()
    why = f"the driver asks for recovery action '{named}'"
    if "drain" in words:
        return XidJudgement(Severity.FAIL, Action.DRAIN_AND_SERVICE, why)
    if "reboot" in words:
        return XidJudgement(Severity.FAIL, Action.REBOOT_NODE, why)
    if "reset" in words or "flr" in words:
        return XidJudgement(Severity.FAIL, Action.RESET_GPU, why)
    if words.strip() == "none":
        return XidJudgement(Severity.INFO, Action.NONE, why)
    return XidJudgement(Severity.FAIL, Action.CONTACT_VENDOR, f"{why}, which dcforge does not know")
