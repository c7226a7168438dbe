"""The result cache: identical requests answered without inference.

Key: sha256 of the image bytes + the normalised parameters + the model's weights sha256,
backend and precision (``Engine.result_identity``), hashed into one hex digest. The same key
gives the same image up to ±1 float rounding of batch composition, so the key doubles as a weak
``ETag``. Values live in memory, least recently used evicted first, at most ``max_bytes`` of
image data in all (0 turns the cache off). Thread-safe: jobs and requests share it.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from .engine import Upscaled


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def cache_key(body_sha256: str, identity: dict) -> str:
    """One digest for the body's digest and the result identity (order-independent JSON)."""
    text = json.dumps({"body": body_sha256, **identity}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def etag(key: str) -> str:
    """Weak: equal keys give equivalent images (±1), not necessarily identical bytes."""
    return f'W/"{key[:32]}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 weak comparison against an If-None-Match list (``*`` matches anything)."""
    if not if_none_match:
        return False
    wanted = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class ResultCache:
    """LRU over encoded results, bounded by the total bytes of the images."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self._items: OrderedDict[str, Upscaled] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Upscaled | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: Upscaled) -> bool:
        """Stores ``item`` (evicting the least recently used); False when it alone is too big."""
        size = len(item.data)
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old.data)
            while self._items and self.bytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted.data)
            self._items[key] = item
            self.bytes += size
        return True
