"""The message ids a router has seen recently, bounded by count and age: a duplicate is
dropped on sight, and the bound keeps a flood of new ids from growing memory."""

from __future__ import annotations

__all__ = ["SeenIds"]

from collections import OrderedDict


class SeenIds:
    """Message ids seen recently, bounded by count and age."""

    __slots__ = ("_ids", "max_age", "max_size")

    def __init__(self, max_size: int, max_age: float) -> None:
        self._ids: OrderedDict[str, float] = OrderedDict()
        self.max_size = max_size
        self.max_age = max_age

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str, now: float) -> None:
        self._ids[item] = now
        self._ids.move_to_end(item)
        if len(self._ids) > self.max_size:
            self._ids.popitem(last=False)

    def expire(self, now: float) -> None:
        ids = self._ids
        limit = now - self.max_age
        while ids:
            item, when = next(iter(ids.items()))
            if when > limit:
                break
            del ids[item]
