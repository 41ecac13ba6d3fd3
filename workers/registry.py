"""Every host action by name (the names are ``contracts.ACTIONS``)."""

from __future__ import annotations

from app import contracts as c
from app.bus import Bus
from workers.actions import Action, Probe
from workers.lifecycle import Stop, Swap


def registry(bus: Bus) -> dict[str, Action]:
    actions: dict[str, Action] = {"probe": Probe(), "swap": Swap(bus), "stop": Stop(bus)}
    assert set(actions) == set(c.ACTIONS), "contracts.ACTIONS and the registry disagree"
    return actions
