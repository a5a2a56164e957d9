"""XID events from the kernel log: `/dev/kmsg` records, else `dmesg` output (the line forms: dcforge/gpu/xid.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

from dcforge.gpu.readings import XidEvent
from dcforge.gpu.xid import parse_xid_lines

__all__ = ["kernel_log_xids", "parse_xid_lines", "read_kmsg"]


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
