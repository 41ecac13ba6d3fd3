"""What handlers take from the application state: the bus and the settings."""

from __future__ import annotations

from litestar.datastructures import State

from app.bus import Bus
from app.config import Settings


def bus_of(state: State) -> Bus:
    bus: Bus = state.bus
    return bus


def settings_of(state: State) -> Settings:
    settings: Settings = state.settings
    return settings
