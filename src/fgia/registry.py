"""One registry type for everything fgia looks up by name: models, descriptors, losses, dataset readers, index
kinds. Each stage keeps its own `Registry` instance; builders register with a decorator, lookups of unknown names
fail with the known ones listed."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`kind` names them in errors, e.g. "model")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering its target under `name` (default: its `__name__`); a name is taken once."""

        def wrap(entry: T) -> T:
            self.add(name or entry.__name__, entry)
            return entry

        return wrap

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry called `name`; KeyError naming the close matches and where to see them all."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style `pattern`, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def values(self) -> list[T]:
        """Every entry, in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
