"""A small name -> factory registry that Hydra config groups map onto."""

from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (as used in configs, e.g. ``cache=radix``) to factories.

    Raises:
        ValueError: on an unknown name (the message lists the known ones) or a
            duplicate registration.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable[..., T]] = {}

    def register(self, name: str):
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = factory
            return factory
        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._items)}")
        return self._items[name]

    def names(self):
        return sorted(self._items)
