"""What the serving failover step records of the replica it killed (inference_failover, here and on a cluster)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Kill:
    """What happened to the victim replica during the load."""

    t_kill: float
    """SIGKILL time, seconds since the epoch (the request log's clock)."""
    victim: str
    """The killed replica as the replica header names it (its pid; `<pod address>/<pid>` on target kubernetes)."""
    respawned: str
    """The replica that took its place: the one gunicorn started, or the Deployment's new pod's."""
    respawn_s: float
    """SIGKILL -> the new replica announced readiness."""
    what: str
    """The kill in words, for the plot's marker."""
