"""UnixInfo: what only AF_UNIX sockets have (`-x`, `--path`, the UNIX counts).

A module of its own, imported where UNIX sockets are read or shown, so that a listing
of TCP/UDP sockets does not create this dataclass at start-up; `sockstat.model.UnixInfo`
names the same class.
"""

from __future__ import annotations

from sockstat._precompiled import dataclass  # dataclasses.dataclass, compiled once
from sockstat.model import UNNAMED, UnixType


@dataclass(slots=True)
class UnixInfo:
    """What only AF_UNIX sockets have: a type, a name and a peer.

    name: a filesystem path, "@name" for the abstract namespace, None when unnamed
    (socketpair(), or the client end of a connection). The peer fields are filled by
    pairing the peer inode with the peer socket in the same dump (its holder goes to
    Socket.peer_process, by the same inode -> process scan); None where not visible.
    """

    type: UnixType
    name: str | None = None
    peer_inode: int | None = None  # 0/None: no peer (listener, unconnected datagram)
    peer_name: str | None = None
    vfs_inode: int | None = None  # the inode of the socket file on disk (path names)
    vfs_dev: int | None = None

    @property
    def display_name(self) -> str:
        return self.name if self.name else UNNAMED
