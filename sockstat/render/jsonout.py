"""JSON for machines: every matching socket, one object each (schema in README)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sockstat.model import Socket, socket_to_dict


def write_sockets(stream, sockets: Iterable[Socket]) -> None:
    """A JSON array, written in chunks so 100k sockets never form one giant string."""
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    stream.write("[")
    first = True
    batch: list[str] = []
    for sock in sockets:
        batch.append(encode(socket_to_dict(sock)))
        if len(batch) >= 2048:
            stream.write(("" if first else ",") + ",\n".join(batch))
            first = False
            batch.clear()
    if batch:
        stream.write(("" if first else ",") + ",\n".join(batch))
    stream.write("]\n")


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
