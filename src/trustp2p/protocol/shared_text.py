"""
One copy of a text that many objects hold, and the nodes of one process (a
simulation) between them: message ids, topics, origins, payloads, keys, signatures,
the message log's sources.

:func:`share` stands in for :func:`sys.intern`, which did this job before. CPython 3.12
never frees an interned string (PEP 683 made them immortal; 3.11 and 3.13 free them),
and these texts come from peers: on 3.12 a node kept every payload, id and relay path
it was ever sent (found in review, review55 R2). The table here is the process's own
and bounded: texts of up to :data:`MAX_TEXT` characters, :data:`MAX_ENTRIES` of them
and :data:`MAX_CHARACTERS` in all at most; when full it starts afresh (texts shared
before stay shared by whoever holds them, and go when they let go). A flood of
distinct texts costs the sharing, and never more memory than that bound.
"""

from __future__ import annotations

__all__ = ["MAX_CHARACTERS", "MAX_ENTRIES", "MAX_TEXT", "SharedText", "share"]

MAX_TEXT = 4096
"""Characters of the longest text shared (a longer one is returned as it is)."""

MAX_ENTRIES = 65_536
"""Texts in the table at most."""

MAX_CHARACTERS = 2**20
"""Characters of the texts in the table at most (4 MiB of text at 4 bytes a character,
with the table's own entries about 10 MiB at most: review56 measured 16-23 MiB at 4 Mi
characters)."""


class SharedText:
    """A bounded table of texts, each its own key: see the module's docstring."""

    __slots__ = ("_characters", "_table", "max_characters", "max_entries", "max_text")

    def __init__(
        self,
        *,
        max_text: int = MAX_TEXT,
        max_entries: int = MAX_ENTRIES,
        max_characters: int = MAX_CHARACTERS,
    ) -> None:
        self.max_text = max_text
        self.max_entries = max_entries
        self.max_characters = max_characters
        self._table: dict[str, str] = {}
        self._characters = 0

    def __len__(self) -> int:
        return len(self._table)

    def share(self, text: str) -> str:
        """The copy of ``text`` in the table, ``text`` itself if there is none (kept
        from now on, if short enough)."""
        shared = self._table.get(text)
        if shared is not None:
            return shared
        size = len(text)
        if size > self.max_text:
            return text
        if len(self._table) >= self.max_entries or self._characters + size > self.max_characters:
            self._table.clear()
            self._characters = 0
        self._table[text] = text
        self._characters += size
        return text


_PROCESS = SharedText()
share = _PROCESS.share
"""The process's table's :meth:`SharedText.share`."""
