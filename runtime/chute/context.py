"""What a plugin is given when it is built: names, folders, and the shared services."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .broker import Broker
from .store import StateStore


@dataclass(frozen=True, slots=True)
class PluginContext:
    name: str
    """The config table's name: the pool, source or operator this plugin serves."""
    topic: str
    """The topic a source publishes to, or the topic a pool reads."""
    base_dir: Path
    """The config file's folder; relative paths in options resolve against it."""
    workdir: Path
    """The runtime's private folder (state database, executors' scratch folders)."""
    node: str
    """This process's name, unique among nodes sharing a broker."""
    broker: Broker
    store: StateStore | None = None
    stable_node: str = ""
    """This node's name across restarts: ``node`` from the config, else the host
    name (for names that must survive a restart, such as a source's consumer)."""

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p
