"""A cache mapping that keeps each object as compressed JSON and decodes it on every read.

Why: at thousands of objects the informer caches of EndpointSlices, Endpoints and Services were
the largest share of the controller's memory (docs/performance.md, memory). As Python dicts a
10-endpoint EndpointSlice costs ~5 KB (a dict per endpoint, a list per address list, a dict per
port...); its JSON is ~1.5 KB, and deflated against a dictionary made of the first object the
cache held (the next slice looks almost the same) a few hundred bytes. Nothing is dropped, so a
read-modify-write from the cache (an adopted Endpoints, a slice update that keeps others' labels)
still sends back everything others set, without a GET first.

The price is CPU per read: ~1 µs to inflate and ~6-10 µs to decode a small object, paid by a
reconcile that reads its Service's few objects, never per probe. A read returns a new object each
time: a reader may change it freely (nothing it does reaches the cache), and must not expect two
reads to return the same object.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any

Obj = dict[str, Any]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_decode = json.JSONDecoder().decode
_WBITS = -12  # raw deflate, 4 KB window: an object of a few KB and its dictionary fit; far cheaper to set up
_MEM_LEVEL = 4  # than the default 32 KB window (9 µs instead of 60 µs to compress a 1.5 KB slice)
_LEVEL = 1
_ZDICT_MAX = 4096  # the window: a longer dictionary would only be cut
RECENT = 64  # objects decoded for peek(), kept for the next read of the same record


class FrozenCache(MutableMapping[str, Obj]):
    """``key -> object``, stored as deflated JSON. Reads decode (a fresh object each time)."""

    __slots__ = ("_data", "_recent", "_zdict")

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._zdict = b""  # the first object's JSON, fixed for the cache's life (what was stored needs it)
        # id(record) -> (record, its decoded object), the RECENT last peeked: a burst of reads of one
        # object (a ClusterEndpoint's status computed and compared once per probe transition) decodes once
        self._recent: OrderedDict[int, tuple[bytes, Obj]] = OrderedDict()

    def freeze(self, obj: Obj) -> bytes:
        raw = _encode(obj).encode("utf-8", "surrogatepass")  # a lone surrogate round-trips
        if not self._zdict:
            self._zdict = raw[-_ZDICT_MAX:]  # deflate looks back: the end of the dictionary matters most
        compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY,
                                      self._zdict)
        return compressor.compress(raw) + compressor.flush()

    def thaw(self, data: bytes) -> Obj:
        value = _decode(zlib.decompressobj(_WBITS, self._zdict).decompress(data).decode("utf-8", "surrogatepass"))
        if not isinstance(value, dict):  # only dicts are ever frozen
            raise TypeError(f"frozen cache entry decoded to {type(value).__name__}")
        return value

    def raw(self, key: str) -> bytes:
        """``key``'s stored record, for a holder that keeps the last object it saw without a second
        copy (the same bytes object; :meth:`thaw` decodes it, even once the cache holds a newer one)."""
        return self._data[key]

    def peek(self, key: str) -> Obj | None:
        """``key``'s object, **read-only**: shared with the next reader of the same record (as a dict
        cache's objects are shared). For hot readers that never change what they read."""
        data = self._data.get(key)
        return None if data is None else self.peek_raw(data)

    def peek_raw(self, data: bytes) -> Obj:
        """The object of a record from :meth:`raw` (possibly no longer the current one), read-only."""
        hit = self._recent.get(id(data))
        if hit is not None and hit[0] is data:
            self._recent.move_to_end(id(data))
            return hit[1]
        obj = self.thaw(data)
        self._recent[id(data)] = (data, obj)  # holding ``data`` keeps its id from being reused meanwhile
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return obj

    def __getitem__(self, key: str) -> Obj:
        return self.thaw(self._data[key])

    def __setitem__(self, key: str, obj: Obj) -> None:
        self._data[key] = self.freeze(obj)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenCache({len(self._data)} objects)"
