"""The sandbox's image store: thread-safe, ordered for paging, optionally persisted.

A stored image is never mutated: a PATCH replaces its record (``update``), so each record
caches its JSON encoding: list pages and the data file are joined from cached strings instead
of being re-serialised, which keeps 10,000-image listings and per-mutation saves cheap.

Listing order is Glance's default, newest ``created_at`` first, with the insertion sequence
as tie breaker (timestamps have one-second resolution), so paging with a marker is
deterministic. Ids of deleted images stay reserved, as in Glance's soft-delete.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ConfigError
from reconciler.sandbox.replies import GlanceError

_FORMAT = "reconcile-sandbox-images"
_VERSION = 1

Matcher = Callable[[dict[str, Any]], bool]
SortKeys = Sequence[tuple[str, bool]]  # (field, descending)
DEFAULT_SORT: SortKeys = (("created_at", True),)


@dataclass(frozen=True)
class Record:
    """One stored image; ``image`` must not be mutated (it is shared with readers)."""

    seq: int
    image: dict[str, Any]
    encoded: str

    @property
    def order_key(self) -> tuple[str, int]:
        return (str(self.image.get("created_at")), self.seq)


def _order_key(record: Record) -> tuple[str, int]:
    return record.order_key


_SEQ = ""  # pseudo sort field: the insertion sequence (no image field has an empty name)


def _sort_value(record: Record, field: str) -> tuple[bool, Any]:
    """Nulls first, then values; never compares None with a value."""
    value = record.seq if field == _SEQ else record.image.get(field)
    return (value is not None, value if value is not None else 0)


class ImageStore:
    """Images by id, a sorted index for listing, and the data file."""

    def __init__(self, data_file: str | None = None) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Record] = {}  # insertion (seq) order
        self._order: list[Record] = []  # ascending order_key
        self._deleted: set[str] = set()
        self._next_seq = 0
        self._data_file = data_file
        self._version = 0  # bumped by every mutation
        self._saved_version = -1
        self._save_lock = threading.Lock()
        if data_file is not None:
            self._load(data_file)
            self._persist(0)  # fail at start, not on the first create, if it is not writable

    def insert(self, image: dict[str, Any]) -> Record:
        """Add *image*; 409 if its id exists or existed."""
        image_id = str(image["id"])
        encoded = json.dumps(image, ensure_ascii=False)
        with self._lock:
            if image_id in self._by_id or image_id in self._deleted:
                raise GlanceError(409, f"Image ID {image_id} already exists!")
            record = Record(self._next_seq, image, encoded)
            self._next_seq += 1
            self._add(record)
            self._version += 1
            version = self._version
        self._persist(version)
        return record

    def update(self, image_id: str,
               change: Callable[[dict[str, Any]], dict[str, Any]]) -> Record | None:
        """Replace the image by ``change(image)``, atomically (None if there is none); what
        ``change`` raises leaves the image as it was. Its place in the listing order stays."""
        with self._lock:
            old = self._by_id.get(image_id)
            if old is None:
                return None
            image = change(old.image)
            record = Record(old.seq, image, json.dumps(image, ensure_ascii=False))
            index = bisect.bisect_left(self._order, old.order_key, key=_order_key)
            self._order[index] = record
            self._by_id[image_id] = record
            self._version += 1
            version = self._version
        self._persist(version)
        return record

    def get(self, image_id: str) -> Record | None:
        with self._lock:
            return self._by_id.get(image_id)

    def delete(self, image_id: str) -> bool:
        """Remove the image; False if there was none."""
        with self._lock:
            record = self._by_id.pop(image_id, None)
            if record is None:
                return False
            index = bisect.bisect_left(self._order, record.order_key, key=_order_key)
            del self._order[index]
            self._deleted.add(image_id)
            self._version += 1
            version = self._version
        self._persist(version)
        return True

    def records(self) -> list[Record]:
        """All records in insertion order."""
        with self._lock:
            return list(self._by_id.values())

    def page(
        self, matches: Matcher, *, marker: str | None, limit: int, sort: SortKeys
    ) -> list[Record]:
        """Up to *limit* matching records after *marker* in *sort* order.

        Raises ``KeyError`` for an unknown marker.
        """
        with self._lock:
            marker_record = None
            if marker is not None:
                marker_record = self._by_id.get(marker)
                if marker_record is None:
                    raise KeyError(marker)
            if limit <= 0:
                return []
            if tuple(sort) == DEFAULT_SORT:
                return self._page_default(matches, marker_record, limit)
            return self._page_sorted(matches, marker_record, limit, sort)

    def _page_default(self, matches: Matcher, marker: Record | None, limit: int) -> list[Record]:
        """Walk the index backwards from the marker: O(page), not O(store)."""
        start = len(self._order)
        if marker is not None:
            start = bisect.bisect_left(self._order, marker.order_key, key=_order_key)
        found: list[Record] = []
        for index in range(start - 1, -1, -1):
            record = self._order[index]
            if matches(record.image):
                found.append(record)
                if len(found) == limit:
                    break
        return found

    def _page_sorted(
        self, matches: Matcher, marker: Record | None, limit: int, sort: SortKeys
    ) -> list[Record]:
        """Any other sort: filter, sort with Glance's tie breakers, slice after the marker."""
        candidates = [r for r in self._by_id.values() if matches(r.image)]
        if marker is not None and not matches(marker.image):
            candidates.append(marker)
        last_descending = sort[-1][1]
        keys = [*sort, ("created_at", last_descending), (_SEQ, last_descending)]
        # Python's sort is stable (also with reverse=True): sorting by the least significant
        # key first yields the multi-key order with a direction per key.
        for field, descending in reversed(keys):
            candidates.sort(key=lambda r: _sort_value(r, field), reverse=descending)
        if marker is not None:
            candidates = candidates[candidates.index(marker) + 1 :]
        return candidates[:limit]

    def _add(self, record: Record) -> None:
        self._by_id[str(record.image["id"])] = record
        bisect.insort(self._order, record, key=_order_key)

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read sandbox data file {path}: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ConfigError(f"{path} is not a sandbox data file")
        if document.get("version") != _VERSION:
            raise ConfigError(f"{path}: unsupported sandbox data version {document.get('version')}")
        try:
            for entry in document["images"]:
                image = entry["image"]
                self._add(Record(entry["seq"], image, json.dumps(image, ensure_ascii=False)))
            self._deleted = set(document["deleted_ids"])
            self._next_seq = int(document["next_seq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed sandbox data file ({exc!r})") from exc

    def _persist(self, version: int) -> None:
        """Return once the data file holds a snapshot that includes mutation *version*.

        Writers queue on one lock; whoever gets it writes the newest snapshot, so concurrent
        creates share one write instead of each rewriting the whole file.
        """
        if self._data_file is None:
            return
        with self._save_lock:
            if self._saved_version >= version:
                return
            with self._lock:
                text, snapshot = self._serialise(), self._version
            tmp = f"{self._data_file}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.replace(tmp, self._data_file)
            except OSError as exc:
                message = f"cannot write sandbox data file {self._data_file}: {exc}"
                raise ConfigError(message) from exc
            self._saved_version = snapshot

    def _serialise(self) -> str:
        """The data file's text, joined from cached encodings; the caller holds the lock."""
        images = ",\n".join(
            f'{{"seq": {r.seq}, "image": {r.encoded}}}' for r in self._by_id.values()
        )
        header = json.dumps({"format": _FORMAT, "version": _VERSION, "next_seq": self._next_seq})
        deleted = json.dumps(sorted(self._deleted))
        return f'{header[:-1]}, "deleted_ids": {deleted},\n"images": [\n{images}\n]}}\n'
