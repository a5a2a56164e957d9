"""XID events from the kernel log: `/dev/kmsg` records, else `dmesg` output.

The NVIDIA driver logs every XID as `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.`;
/dev/kmsg prefixes records with `priority,sequence,microseconds,flags;` and dmesg with `[seconds]`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from dcforge.gpu.readings import XidEvent

XID_LINE = re.compile(r"NVRM: Xid \(PCI:(?P<pci>[0-9a-fA-F:.]+)\): (?P<xid>\d+)(?:, (?P<message>.*))?")


def parse_xid_lines(text: str) -> list[XidEvent]:
    events = []
    for line in text.splitlines():
        match = XID_LINE.search(line)
        if match:
            events.append(XidEvent(int(match["xid"]), match["pci"], (match["message"] or "").strip(), "kernel log"))
    return events


def read_kmsg(path: str = "/dev/kmsg") -> str:
    """Every record in the kernel ring buffer, without blocking (needs root or CAP_SYSLOG)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    records = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # a record was overwritten while reading: skip to the next one
                continue
            if not record:
                break
            records.append(record.decode(errors="replace"))
    finally:
        os.close(fd)
    return "".join(records)


def kernel_log_xids() -> tuple[list[XidEvent], str | None]:
    """XIDs since boot and None, or no events and why the kernel log could not be read."""
    try:
        return parse_xid_lines(read_kmsg()), None
    except OSError as kmsg_error:
        dmesg = shutil.which("dmesg")
        if dmesg:
            try:
                done = subprocess.run([dmesg], capture_output=True, text=True, timeout=30)
                if done.returncode == 0:
                    return parse_xid_lines(done.stdout), None
                why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            except (OSError, subprocess.SubprocessError) as error:
                why = str(error)
        else:
            why = "no dmesg"
        return [], (f"kernel log unreadable (/dev/kmsg: {kmsg_error.strerror}; dmesg: {why}): "
                    "XIDs seen only through NVML")
