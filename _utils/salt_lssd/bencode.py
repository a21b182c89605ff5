"""Bencoding (BEP 3), strict on decode: the tracker and the torrent code share it."""

import re


def encode(value):
    out = []
    _encode(value, out)
    return b"".join(out)


def _encode(value, out):
    if isinstance(value, bool):  # bool is an int subclass; refuse it rather than guess
        raise TypeError("cannot bencode a bool")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray)):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = [(k.encode("utf-8") if isinstance(k, str) else k, v) for k, v in value.items()]
        for key, item in sorted(items):
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


# Canonical forms only: no leading zeros, no "-0", no whitespace or underscores.
_INT = re.compile(rb"0|-?[1-9][0-9]*")
_LEN = re.compile(rb"0|[1-9][0-9]*")


def decode(data):
    """Decode one bencoded value that must span all of ``data``."""
    try:
        value, end = _decode(data, 0)
    except RecursionError:
        raise ValueError("bencoded data nested too deeply") from None
    if end != len(data):
        raise ValueError(f"trailing data after bencoded value at offset {end}")
    return value


def _decode(data, i):
    if i >= len(data):
        raise ValueError("truncated bencoded data")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        digits = bytes(data[i + 1 : end])
        if not _INT.fullmatch(digits):
            raise ValueError(f"invalid bencoded integer {digits!r} at offset {i}")
        return int(digits), end + 1
    if c == b"l":
        i += 1
        items = []
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"d":
        i += 1
        items = {}
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i)
            if not isinstance(key, bytes):
                raise ValueError("bencoded dictionary key is not a string")
            items[key], i = _decode(data, i)
        return items, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        digits = bytes(data[i:colon])
        if not _LEN.fullmatch(digits):
            raise ValueError(f"invalid bencoded string length {digits!r} at offset {i}")
        length = int(digits)
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated bencoded string")
        return bytes(data[start : start + length]), start + length
    raise ValueError(f"invalid bencoded data at offset {i}")
