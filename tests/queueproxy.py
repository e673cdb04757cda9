"""Proxies that let through only the queue seam (queues/backend.py): a queue that offers
nothing but QueueBackend's methods, and claims that offer nothing but TaskClaim's. A test
that runs code on them proves the code needs nothing else of a queue."""

from __future__ import annotations

from typing import Any

from hostctl.queues.backend import QueueBackend, TaskClaim


def members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")}


class NotInTheInterface(AssertionError):
    pass


class OnlyClaim:
    """A claim that offers only TaskClaim's members."""

    def __init__(self, inner: Any, used: set[str]) -> None:
        self._inner, self._used = inner, used

    def __getattr__(self, name: str) -> Any:
        if name not in members(TaskClaim):
            raise NotInTheInterface(f"the caller used claim.{name}")
        self._used.add(f"claim.{name}")
        return getattr(self._inner, name)


class OnlyQueue:
    """A queue that offers only QueueBackend's methods, over a real backend; claims go
    out wrapped in OnlyClaim and come back unwrapped."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name not in members(QueueBackend):
            raise NotInTheInterface(f"the caller used queue.{name}")
        self.used.add(name)
        method = getattr(self._inner, name)

        def call(*args: Any, **kw: Any) -> Any:
            args = tuple(a._inner if isinstance(a, OnlyClaim) else a for a in args)
            kw = {k: v._inner if isinstance(v, OnlyClaim) else v for k, v in kw.items()}
            out = method(*args, **kw)
            if name == "claim":
                return [OnlyClaim(c, self.used) for c in out]
            if name == "publish_claimed":
                return OnlyClaim(out, self.used)
            return out

        return call
