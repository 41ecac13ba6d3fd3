"""Every host action by name (the names are ``contracts.ACTIONS``)."""

from __future__ import annotations

from app import contracts as c
from app.bus import Bus
from app.config import Settings
from workers.actions import Action, Probe
from workers.lifecycle import Restart, Stop, Swap
from workers.notify import Notifier
from workers.scan import Scan
from workers.services import NimInstall, ServiceAction
from workers.transfer import Pull, Push
from workers.vllmflags import VllmFlags
from workers.weights import Delete, Disk, Download


def registry(bus: Bus, settings: Settings) -> dict[str, Action]:
    actions: dict[str, Action] = {
        "probe": Probe(settings.probe_max_age_s),
        "swap": Swap(bus, Notifier(settings), settings.cluster_script),
        "stop": Stop(bus, settings.cluster_script),
        "restart": Restart(bus, settings.cluster_script),
        "download": Download(settings), "delete": Delete(bus), "disk": Disk(), "scan": Scan(bus),
        "service": ServiceAction(bus), "nim_install": NimInstall(settings),
        "push": Push(bus, settings), "pull": Pull(bus), "vllm_flags": VllmFlags(bus),
    }  # fmt: skip
    assert set(actions) == set(c.ACTIONS), "contracts.ACTIONS and the registry disagree"
    return actions
