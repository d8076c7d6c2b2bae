"""One error tree: a root and a few causes, each with a message a user can act on."""

from __future__ import annotations


class ChuteError(Exception):
    """Root of every error chute raises on purpose."""


class ConfigError(ChuteError):
    """A config file (or config object) is wrong. One problem per line in ``problems``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PluginNotFound(ChuteError):
    """No plugin of that kind and name is installed (or its extra is missing)."""


class ClosedError(ChuteError):
    """The broker, store or runtime was closed by us; the operation cannot proceed."""


class Unavailable(ChuteError):
    """Something chute needs from outside is not there: a port in use, a service down
    past its start-up deadline, or a service refusing us for good (a wrong password,
    a key of the wrong type).

    The CLI prints it as one line and exits 3.
    """


class BrokerUnavailable(Unavailable):
    """The broker's backing service cannot be reached; the caller retries with backoff."""


class StoreUnavailable(Unavailable):
    """The state store's backing service cannot be reached in time."""


class ExecutorUnavailable(ChuteError):
    """The runtime could not run an item for a cause of its own, not the item's:
    the disk is full, descriptors or processes ran out, the program is missing
    (a deploy in progress). The pool pauses its intake and runs the item again
    later, without counting an attempt."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ItemFailed(ChuteError):
    """An executor failed on an item. ``permanent`` failures skip the remaining attempts."""

    def __init__(self, reason: str, *, permanent: bool = False, output: str = "") -> None:
        self.reason = reason
        self.permanent = permanent
        self.output = output
        super().__init__(reason)


class InvalidMessage(ChuteError):
    """A message or item could not be decoded or does not have the expected shape."""
