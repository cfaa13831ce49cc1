"""A tiny name -> factory registry (timm-style) shared by rules, models, datasets, attacks."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ssbench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to objects; unknown names raise one clear line listing the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        key = name.lower()

        def add(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[key] = obj
            self._help[key] = help or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]
            return obj

        return add

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._items:
            raise UnknownNameError(self.kind, name, sorted(self._items))
        return self._items[key]

    def help(self, name: str) -> str:
        return self._help[name.lower()]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
