"""Counting without rows: batches compacted to fixed-size records (netlink.Compactor,
netlink.Records) on captured and hand-made bytes, and on a real table in a namespace of
the test's own, against the rows the full parser builds from the same dump."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import pytest
from conftest import FIXTURES, NEEDS_NETNS

from sockstat.collect import netlink
from sockstat.model import Proto, TcpState

CAPTURED = (FIXTURES / "netlink_tcp4_dump.bin").read_bytes()


def _messages(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


def _trimmed(message: bytes, length: int) -> bytes:
    """A captured socket report cut to `length` bytes (fewer attributes), as the kernel
    sends a TIME_WAIT mini-socket next to full ones."""
    out = bytearray(message[:length])
    struct.pack_into("=I", out, 0, length)
    return bytes(out)


SOCKETS = [m for m in _messages(CAPTURED) if struct.unpack_from("=H", m, 4)[0] == 20]
DONE = _messages(CAPTURED)[-1]
# three kinds of message in one batch, as in a real reply (full sockets, mini-sockets)
MIXED = b"".join([SOCKETS[0], _trimmed(SOCKETS[1], 96), _trimmed(SOCKETS[2], 124),
                  _trimmed(SOCKETS[0], 96), SOCKETS[1], DONE])


@pytest.fixture(autouse=True)
def nothing_learnt():
    """Each test's compactors start from nothing (they share what a process learnt)."""
    netlink._LEARNT.clear()
    yield
    netlink._LEARNT.clear()


def _one_by_one(data: bytes) -> tuple[bool, list[bytes]]:
    out: list = []
    done = netlink.parse_messages(data, Proto.TCP, netlink.AddressCache(socket.AF_INET), out,
                                  tally=True)
    return done, out


def test_a_batch_of_mixed_lengths_compacts_to_the_parsers_records():
    done, records = _one_by_one(MIXED)
    assert done and len(records) == 5
    compactor = netlink.Compactor()
    assert compactor.compact(MIXED) == (b"".join(records), True)
    assert len(compactor.kinds) == 3
    # without the DONE: the same records, and the dump goes on
    assert compactor.compact(MIXED[:-len(DONE)]) == (b"".join(records), False)
    assert compactor.compact(DONE) == (b"", True)


def test_records_read_each_field_at_its_offset():
    _, records = _one_by_one(MIXED)
    rows: list = []
    netlink.parse_messages(MIXED, Proto.TCP, netlink.AddressCache(socket.AF_INET), rows)
    view = netlink.Records(socket.AF_INET, [netlink.Compactor().compact(MIXED)[0]])
    assert len(view) == len(rows) == 5
    assert [TcpState(s) for s in view.states()] == [r.state for r in rows]
    assert list(view.local_ports()) == [r.local.port for r in rows]
    assert [view.address_text(a) for a in view.remote_addresses()] == \
        [r.remote.address for r in rows]


@pytest.mark.parametrize("cut", [1, 17, 87, 100, len(SOCKETS[0]) - 1, len(MIXED) - 1])
def test_a_truncated_batch_is_left_to_the_parser_which_refuses_it(cut):
    """Compaction never guesses: a batch it cannot tile exactly is None, and the
    one-by-one parser raises for it."""
    data = MIXED[:cut]
    assert netlink.Compactor().compact(data) is None
    if cut == len(MIXED) - 1:  # the DONE lost a byte: the reports before it are fine
        return
    with pytest.raises(netlink.ParseError):
        _one_by_one(data)


@pytest.mark.parametrize("byte,value", [(16, 99), (17, 77)])
def test_an_unknown_family_or_state_is_left_to_the_parser(byte, value):
    bad = bytearray(MIXED)
    bad[len(SOCKETS[0]) + byte] = value  # the second message
    compactor = netlink.Compactor()
    compactor.compact(MIXED)  # the kinds are known: the pattern matches, the check refuses
    assert compactor.compact(bytes(bad)) is None
    with pytest.raises(netlink.ParseError):
        _one_by_one(bytes(bad))


def test_an_error_reply_or_a_claimed_length_past_the_end_is_left_to_the_parser():
    error = netlink.NLMSGHDR.pack(36, netlink.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) \
        + bytes(16)
    with_error = SOCKETS[0] + error + DONE
    assert netlink.Compactor().compact(with_error) is None
    with pytest.raises(netlink.PermissionDenied):
        _one_by_one(with_error)
    too_long = bytearray(SOCKETS[0])
    struct.pack_into("=I", too_long, 0, len(too_long) + 64)
    assert netlink.Compactor().compact(bytes(too_long)) is None


def test_a_report_whose_last_bytes_look_like_done_is_not_the_end():
    """The DONE test looks at the batch's last 20 bytes; bytes inside a report that look
    like one leave the batch untiled, so the parser reads it (and the dump goes on)."""
    fake = bytearray(SOCKETS[0])
    fake[-20:] = netlink.NLMSGHDR.pack(20, netlink.NLMSG_DONE, 2, 1, 0) + bytes(4)
    assert netlink.Compactor().compact(bytes(fake)) is None
    done, records = _one_by_one(bytes(fake))
    assert not done and len(records) == 1


def test_unexpected_flags_or_too_many_kinds_fall_back_to_the_parser():
    flagged = bytearray(SOCKETS[0])
    struct.pack_into("=H", flagged, 6, 0x12)  # NLM_F_MULTI | NLM_F_DUMP_INTR
    compactor = netlink.Compactor()
    assert compactor.compact(bytes(flagged) + DONE) == \
        (_one_by_one(bytes(flagged) + DONE)[1][0], True)  # a new kind, learnt
    many = b"".join(_trimmed(SOCKETS[0], 88 + 4 * i)
                    for i in range(netlink.MAX_RECORD_KINDS + 1))
    assert netlink.Compactor().compact(many) is None
    assert len(_one_by_one(many)[1]) == netlink.MAX_RECORD_KINDS + 1


def test_unix_reports_compact_with_their_own_record_and_check():
    from sockstat.collect import unix

    data = (FIXTURES / "netlink_unix_dump.bin").read_bytes()
    rows: list = []
    assert unix.parse_messages(data, rows)
    record = unix._HEADER_AND_MSG.size
    compactor = netlink.Compactor(record, unix._records_valid)
    packed, done = compactor.compact(data)
    assert done and packed[unix._AT["udiag_state"]::record] == bytes(s.state for s in rows)
    bad = bytearray(data)
    bad[unix._AT["udiag_type"]] = 99  # the first report: no such socket type
    assert compactor.compact(bytes(bad)) is None
    with pytest.raises(netlink.ParseError):
        unix.parse_messages(bytes(bad), [])


# -- a real table, in a network namespace of the test's own ------------------------------

# Runs inside `unshare --net`: a few hundred sockets of several states over IPv4 and
# IPv6, then every comparison on the same, quiet table (nothing else lives there).
TABLE_SCRIPT = r"""
import json, socket, sys
import subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect, count, netlink
from sockstat.model import INET_PROTOS, Family, Proto, TcpState
from sockstat.query import Query
from sockstat.summarize import summarize, tally_sockets

held = []
def pairs(host, family, n, half_close=0):
    srv = socket.socket(family); srv.bind((host, 0)); srv.listen(512); held.append(srv)
    for i in range(n):
        c = socket.socket(family); c.connect(srv.getsockname()[:2])
        s, _ = srv.accept(); held.extend([c, s])
        if i < half_close:
            c.shutdown(socket.SHUT_WR)  # s: CLOSE_WAIT, c: FIN_WAIT2
def time_wait(host, family, n):
    srv = socket.socket(family); srv.bind((host, 0)); srv.listen(512)
    for _ in range(n):
        c = socket.socket(family); c.connect(srv.getsockname()[:2])
        s, _ = srv.accept(); s.close(); c.recv(1); c.close()
    srv.close()
pairs("127.0.0.1", socket.AF_INET, 120, half_close=10)
pairs("127.0.0.2", socket.AF_INET, 40)
pairs("::1", socket.AF_INET6, 40, half_close=5)
time_wait("127.0.0.3", socket.AF_INET, 80)
time_wait("::1", socket.AF_INET6, 20)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
held.append(udp)
held.extend(s for _ in range(30) for s in socket.socketpair())
ux = socket.socket(socket.AF_UNIX); ux.bind("\0sockstat-tally-test"); ux.listen(4); held.append(ux)

result = {}
everything = Query(protos=INET_PROTOS | {Proto.UNIX})
for query in (everything, Query.build(tcp=True), Query.build(states=["established", "listen"]),
              Query(protos=frozenset({Proto.UNIX}), states=frozenset({TcpState.LISTEN}))):
    snap = collect(query)
    tally = count(query)
    rows = tally_sockets(snap.sockets)
    result.setdefault("equal", []).append(
        (tally.total, tally.by_state, tally.local_ports, tally.remote_hosts)
        == (rows.total, rows.by_state, rows.local_ports, rows.remote_hosts))
    result.setdefault("summary_equal", []).append(
        summarize(snap, tally=tally).to_dict() == summarize(snap).to_dict())
result["total"] = len(collect(everything).sockets)
result["unix"] = tally.by_state[TcpState.LISTEN]["unix"]

# every real batch: compacted in one pass == the parser's records one by one
compacted = fallback = 0
compactor = netlink.Compactor()
for af in (socket.AF_INET, socket.AF_INET6):
    nl = netlink.open_socket()
    nl.send(netlink.build_request(af, socket.IPPROTO_TCP, 0xFFFFFFFF))
    for batch in netlink.batches(nl):
        one = []
        done = netlink.parse_messages(batch, Proto.TCP, netlink.AddressCache(af), one,
                                      tally=True)
        packed = compactor.compact(batch)
        if packed is None:
            fallback += 1
        else:
            compacted += 1
            assert packed == (b"".join(one), done), "compacted records differ"
        if done:
            break
    nl.close()
result["compacted"], result["fallback"] = compacted, fallback

# one walk for both families (the old request) == one dump per family, socket for socket
def identities(chunks, af):
    part = netlink.Records(None, chunks).of_family(af).data
    return sorted(part[i + 16:i + 68]  # family, state, timer, ports, addresses, cookie
                  for i in range(0, len(part), netlink.RECORD))
both, each = [], {}
netlink.dump(None, Proto.TCP, set(TcpState), out=both, tally=True)
for family, af in ((Family.INET, socket.AF_INET), (Family.INET6, socket.AF_INET6)):
    each[af] = []
    netlink.dump(family, Proto.TCP, set(TcpState), out=each[af], tally=True)
result["one_walk"] = [identities(both, af) == identities(each[af], af) and len(each[af]) > 0
                      for af in (socket.AF_INET, socket.AF_INET6)]
result["kinds"] = len(compactor.kinds)
print(json.dumps(result))
"""


@NEEDS_NETNS
def test_counts_from_records_equal_counts_of_rows_on_a_real_table():
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", TABLE_SCRIPT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["equal"] == [True] * 4
    assert result["summary_equal"] == [True] * 4
    assert result["total"] > 500 and result["unix"] == 1
    # the real batches were compacted (a kind is learnt once, from the first batch)
    assert result["compacted"] >= 2 and result["fallback"] == 0
    assert result["kinds"] >= 2
    assert result["one_walk"] == [True, True]
