"""One small registry type for every "pick by name" seam: target codecs (keyed by
`kind`), teacher loaders (`kind`) and engines (`name`). An unknown name is a
one-line error that lists the registered names."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from transferset.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: Callable[[T], str], unknown: Callable[[str, str], str]) -> None:
        """`key(item)` is the item's name; `unknown(name, known)` is the message for a
        name nobody registered (`known`: the registered names, comma-separated)."""
        self._items: dict[str, T] = {}
        self._key = key
        self._unknown = unknown

    def register(self, item: T) -> T:
        self._items[self._key(item)] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name) -> T:
        if name not in self._items:
            raise UserError(self._unknown(name, ", ".join(self._items)))
        return self._items[name]

    def __contains__(self, name) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)
