"""The listing's rows written straight from the kernel's records (collect.rows and
jsonout.write_records) against the Socket path (collect() and write_sockets): the same
bytes on a real table in namespaces of the test's own (every shape of socket, both
families, TIME_WAITs named through their listener and not, a socket two processes
hold, one no process holds; with and without processes; the command line too), and on
captured dumps with hand-made owners, where even the timers are the same."""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
import sys

import pytest
from conftest import FIXTURES, NEEDS_NETNS, REPO, TABLE_MAKERS, in_own_namespaces

from sockstat.collect import netlink, owners
from sockstat.collect.rows import _as_processes, row_owners
from sockstat.model import Endpoint, ProcessRef, Proto, TcpState, socket_to_dict
from sockstat.render import jsonout

SCRIPT = r"""
import array, io, json, os, re, socket, subprocess, sys, time
from collections import deque
from itertools import islice
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.cli.show import unattributed_note
from sockstat.collect import collect
from sockstat.collect.rows import listing_rows
from sockstat.query import Query
from sockstat.render import jsonout

""" + TABLE_MAKERS + r"""
v4 = listener("127.0.0.1", socket.AF_INET)
pairs(v4, "127.0.0.1", socket.AF_INET, 30, close_wait=3)
time_wait(v4, "127.0.0.1", socket.AF_INET, 300)  # whole batches of TIME_WAITs
v6 = listener("::1", socket.AF_INET6)
pairs(v6, "::1", socket.AF_INET6, 20, close_wait=2)
time_wait(v6, "::1", socket.AF_INET6, 40)
dual = listener("::", socket.AF_INET6, v6only=0)  # 127.0.0.1 arrives as ::ffff:127.0.0.1
pairs(dual, "127.0.0.1", socket.AF_INET, 10)
time_wait(dual, "127.0.0.3", socket.AF_INET, 10)  # named through the wildcard listener
gone = listener("127.0.0.2", socket.AF_INET)
time_wait(gone, "127.0.0.2", socket.AF_INET, 30)
gone.close()  # these TIME_WAITs are named by nobody
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
held.append(udp)
# a connection no process holds: its one reference in flight over a UNIX socket
carrier, _other = socket.socketpair()
lone = socket.socket(); lone.connect(("127.0.0.1", v4.getsockname()[1]))
held.append(v4.accept()[0])
carrier.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                          array.array("i", [lone.fileno()]))])
lone.close()
shared = listener("127.0.0.4", socket.AF_INET)
pairs(shared, "127.0.0.4", socket.AF_INET, 5)
wait_here, _keep = os.pipe()
child = os.fork()  # holds every socket made so far too: each is shared
if child == 0:
    os.read(wait_here, 1); os._exit(0)  # until killed
for _ in range(500):  # the half-closed clients' FINs are acked in a moment (delayed ACK):
    # read the table once they are, or the two reads can see FIN_WAIT1 and FIN_WAIT2
    if not subprocess.run(["ss", "-Htan", "state", "fin-wait-1"], capture_output=True,
                          text=True).stdout:
        break
    time.sleep(0.01)

def timers(text):  # a timer counts down between two reads of the table
    return re.sub(r'"timer_ms":\d+', '"timer_ms":0', text)

result = []
for name, query in (("all", Query()), ("time-wait", Query.build(states=["time-wait"])),
                    ("tcp6", Query.build(tcp=True, ipv6=True)),
                    ("udp4", Query.build(udp=True, ipv4=True)),
                    ("listening", Query.build(listening=True))):
    for processes in (True, False):
        snap = collect(query, processes=processes)
        slow = io.StringIO(); jsonout.write_sockets(slow, snap.sockets)
        rows = listing_rows(query, processes=processes)
        fast = io.StringIO(); jsonout.write_records(fast, rows.parts, rows.owners)
        # rows written a batch at a time while the scan runs (RecordsWriter: every
        # batch, the first two, none), batches of 50 rows
        prepared = []
        for steps in (None, 2, 0):
            writer, jsonout.BATCH = jsonout.RecordsWriter(), 50
            ahead = lambda parts: [deque(islice(writer.prepare(parts), steps), 0)]
            again = listing_rows(query, processes=processes, meanwhile=ahead)
            out = io.StringIO(); writer.write(out, again.parts, again.owners)
            jsonout.BATCH = 4096
            prepared.append(timers(out.getvalue()) == timers(slow.getvalue()))
        a, b = snap.attribution, rows.snapshot.attribution
        result.append({
            "prepared": prepared,
            "name": name, "processes": processes, "rows": len(snap.sockets),
            "same": timers(slow.getvalue()) == timers(fast.getvalue()),
            "attribution": [a.unattributed, a.causes] == [b.unattributed, b.causes],
            # (the command prints it only for a scan: processes named)
            "note": not processes or unattributed_note(snap) == unattributed_note(
                rows.snapshot),
            "unattributed": b.unattributed,
            "strided": sorted({r.stride for _, r, _ in rows.parts}),
            "shapes": sorted({(s.family.name, s.state.name, s.process is not None
                               and s.process.via_listener, bool(s.others))
                              for s in snap.sockets})})
cli = {}
for args in (["--json"], ["-s", "time-wait", "--json"], ["--json", "--no-processes"]):
    run = subprocess.run([sys.executable, "-m", "sockstat", *args], capture_output=True,
                         text=True)
    snap = collect(Query.build(states=["time-wait"]) if "-s" in args else Query(),
                   processes="--no-processes" not in args)
    slow = io.StringIO(); jsonout.write_sockets(slow, snap.sockets)
    cli[" ".join(args)] = {"same": timers(run.stdout) == timers(slow.getvalue()),
                           "stderr": run.stderr, "code": run.returncode}
os.kill(child, 9)
print(json.dumps({"checks": result, "cli": cli}))
"""


@NEEDS_NETNS
def test_rows_from_records_are_the_socket_paths_bytes_on_a_real_table():
    result = in_own_namespaces(SCRIPT, timeout=180)
    for check in result["checks"]:
        what = f"{check['name']} processes={check['processes']}"
        assert check["rows"] > 0, what
        assert check["same"] and check["attribution"] and check["note"], what
        assert check["prepared"] == [True] * 3, what
    checks = {(c["name"], c["processes"]): c for c in result["checks"]}
    shapes = {tuple(s) for s in checks["all", True]["shapes"]}
    assert {("INET", "TIME_WAIT", True, False), ("INET6", "TIME_WAIT", True, False),
            ("INET", "TIME_WAIT", False, False), ("INET", "ESTABLISHED", False, True),
            ("INET6", "ESTABLISHED", False, True), ("INET", "CLOSE_WAIT", False, True),
            ("INET", "CLOSE", False, True), ("INET6", "LISTEN", False, True)} <= shapes
    assert checks["all", True]["unattributed"] == 1  # the socket in flight
    assert checks["all", True]["rows"] > 500
    # TIME_WAIT reports came in batches of one length, read in place
    assert any(stride != netlink.RECORD for stride in checks["time-wait", True]["strided"])
    for args, run in result["cli"].items():
        assert run["code"] == 0 and run["same"], args
    assert "1 socket(s) shown without a process" in result["cli"]["--json"]["stderr"]
    assert result["cli"]["--json --no-processes"]["stderr"] == ""


# -- captured dumps, hand-made owners ----------------------------------------------------

def _messages(name: str) -> list[bytes]:
    """The socket reports of a captured dump, each message whole."""
    data = (FIXTURES / name).read_bytes()
    out, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind in netlink._REPORT_TYPES:
            out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


def _patched(message: bytes, **fields) -> bytes:
    """A report with some inet_diag_msg fields changed (ports in network order)."""
    out = bytearray(message)
    formats = dict(netlink.NLMSGHDR_FIELDS + netlink.INET_DIAG_MSG_FIELDS)
    for name, value in fields.items():
        fmt = ">H" if name in ("idiag_sport", "idiag_dport") else "=" + formats[name]
        struct.pack_into(fmt, out, netlink.AT[name], value)
    return bytes(out)


def _table() -> tuple[list[bytes], dict]:
    """A TCP table of both families from the captured both-families dump, with
    TIME_WAITs made of its connections: on the IPv4 listener's port (named through it),
    on another port (nobody's), and timers running and not."""
    messages = _messages("netlink_tcp46_together.bin")
    listeners = [m for m in messages if m[netlink.AT["idiag_state"]] == TcpState.LISTEN]
    v4 = next(m for m in listeners if m[netlink.AT["idiag_family"]] == socket.AF_INET)
    port = struct.unpack_from(">H", v4, netlink.AT["idiag_sport"])[0]
    connections = [m for m in messages if m[netlink.AT["idiag_state"]]
                   == TcpState.ESTABLISHED]
    source = next(m for m in connections if m[netlink.AT["idiag_family"]] == socket.AF_INET)
    waits = [_patched(source, idiag_state=TcpState.TIME_WAIT, idiag_timer=3,
                      idiag_inode=0, idiag_expires=1000 + i, idiag_cookie0=900 + i,
                      idiag_sport=port if i % 3 else 9, idiag_dport=40000 + i)
             for i in range(12)]
    keepalive = _patched(connections[-1], idiag_timer=2, idiag_expires=7000,
                         idiag_rqueue=5, idiag_uid=1000)
    return [*messages, *waits, keepalive], {"port": port}


def _socket_rows(sockets, owner_map, listeners) -> str:
    owners.attribute(sockets, owner_map, listeners)
    out = io.StringIO()
    jsonout.write_sockets(out, sockets)
    return out.getvalue()


@pytest.mark.parametrize("stride", ["compacted", "as it came"])
def test_rows_from_captured_records_are_the_socket_paths_bytes(stride):
    """From the same records and the same owner map, both writers give the same bytes:
    owned, shared, unowned and via-listener rows, IPv4 and IPv6, timers on and off,
    batches of one kind and of many, records compacted or read in place."""
    messages, info = _table()
    if stride == "compacted":
        packed = netlink.Compactor().compact(b"".join(messages))[0]
        table = netlink.Records(None, [packed])
    else:  # one message length: a strided batch, every report as it came
        length = max(map(len, messages))
        table = netlink.Records(None, [b"".join(m + bytes(length - len(m))
                                                for m in messages)], length)
    parts = [(Proto.TCP, table.of_family(af), netlink.AddressCache(af))
             for af in (socket.AF_INET, socket.AF_INET6)]
    sockets = [s for proto, records, addresses in parts
               for s in records.sockets(proto, addresses)]
    inodes = sorted(s.inode for s in sockets if s.inode)
    owner_map = owners.OwnerMap()
    for i, inode in enumerate(inodes[:-1]):  # the last one: no process holds it
        owner_map.add(inode, ProcessRef(100 + i % 3, 'n"g{i}nx%s', 3 + i, "www"))
    owner_map.add(inodes[0], ProcessRef(50, "master", 9, None))  # shared, lower pid
    listeners = [s for s in sockets if s.state is TcpState.LISTEN]
    fileless = {s.local for s in sockets if not s.inode}
    found = row_owners(_as_processes(owner_map, set(inodes)), set(inodes), fileless,
                       listeners, owner_map)
    missing = found.missing
    fast = io.StringIO()
    for size in (jsonout.BATCH, 3):  # whole and in batches of 3 rows
        jsonout.BATCH, before = size, jsonout.BATCH
        try:
            fast = io.StringIO()
            jsonout.write_records(fast, parts, found)
        finally:
            jsonout.BATCH = before
        assert fast.getvalue() == _socket_rows(
            [s for proto, records, addresses in parts
             for s in records.sockets(proto, addresses)], owner_map, listeners)
    rows = json.loads(fast.getvalue())
    assert missing == {inodes[-1]}
    assert [r["process"]["pid"] for r in rows if r["inode"] == inodes[0]] == [50]
    assert len(next(r for r in rows if r["inode"] == inodes[0])["processes"]) == 2
    via = [r for r in rows if r["state"] == "TIME_WAIT"]
    assert {r["process"] and r["process"]["via_listener"] for r in via} == {True, None}
    assert {r["local_port"] for r in via if r["process"]} == {info["port"]}
    assert {r["family"] for r in rows} == {"ipv4", "ipv6"}
    assert any(r["timer"] == "keepalive" and r["timer_ms"] == 7000 for r in rows)


FAILED_CHILD = r"""
import io, json, re, socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect, owners
from sockstat.collect.rows import listing_rows
from sockstat.query import Query
from sockstat.render import jsonout

def fails(*_):
    raise RuntimeError("the child fails")

owners._ChildEnd.scan = fails  # in the forked child
with owners.BackgroundScan() as background:
    fell_back = background.forked and background.processes_found() is None
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
accepted, _ = server.accept()
slow = io.StringIO()
jsonout.write_sockets(slow, collect(Query(), processes=True).sockets)
rows = listing_rows(Query(), processes=True)
fast = io.StringIO()
jsonout.write_records(fast, rows.parts, rows.owners)
masked = [re.sub(r'"timer_ms":\d+', "", text.getvalue()) for text in (slow, fast)]
print(json.dumps({"fell_back": fell_back, "same": masked[0] == masked[1],
                  "rows": len(json.loads(fast.getvalue()))}))
"""


@NEEDS_NETNS
def test_a_failed_forked_scan_falls_back_as_collect_does():
    """When the forked scan's child fails, the rows are named by the scan collect()
    falls back to (the one that stops at the wanted inodes), not a full one of their
    own: the two paths give the same bytes."""
    assert in_own_namespaces(FAILED_CHILD) == {"fell_back": True, "same": True, "rows": 3}


def test_owner_texts_from_scan_records_are_the_owner_maps():
    """The scan's records as the forked scan sends them (a dup'ed socket twice in one
    process, a socket two processes hold, names with `%`, quotes and braces) give
    each row the text the owner map's refs give: primary the lowest pid by its first
    fd, every holder listed in pid order."""
    messages, _ = _table()
    table = netlink.Records(None, [netlink.Compactor().compact(b"".join(messages))[0]])
    parts = [(Proto.TCP, table.of_family(af), netlink.AddressCache(af))
             for af in (socket.AF_INET, socket.AF_INET6)]
    sockets = [s for proto, records, addresses in parts
               for s in records.sockets(proto, addresses)]
    inodes = sorted(s.inode for s in sockets if s.inode)
    half = len(inodes) // 2
    processes = [  # in pid order, fds in fd order
        (40, "%s%d {0} \"q\"", None, [3, 4, 5], [inodes[1], inodes[0], inodes[1]]),
        (70, "worker", "www", list(range(10, 10 + half)), inodes[:half]),
        (90, "other", "root", list(range(6, 6 + len(inodes) - half - 1)),
         inodes[half:-1]),
    ]
    owner_map = owners.OwnerMap.from_processes(processes)
    listeners = [s for s in sockets if s.state is TcpState.LISTEN]
    fileless = {s.local for s in sockets if not s.inode}
    found = row_owners(processes, set(inodes), fileless, listeners, owner_map)
    fast = io.StringIO()
    jsonout.write_records(fast, parts, found)
    assert fast.getvalue() == _socket_rows(sockets, owner_map, listeners)
    rows = {r["inode"]: r for r in json.loads(fast.getvalue()) if r["inode"]}
    assert rows[inodes[1]]["process"]["fd"] == 3  # the dup's first fd
    assert [p["pid"] for p in rows[inodes[0]]["processes"]] == [40, 70]
    assert rows[inodes[-1]]["process"] is None and found.missing == {inodes[-1]}


@pytest.mark.parametrize("alone", [True, False])
def test_a_udp_row_without_a_file_has_no_owner(alone):
    """A UDP socket with inode 0 (one a kernel module holds, with no file) has no owner
    on either path, in a batch of its own or among sockets with a file (the writer
    looked for it among the fileless TCP endpoints and failed)."""
    messages = _messages("netlink_udp_skmem_dump.bin")
    messages = [_patched(m, idiag_inode=0) if alone or at == 0 else m
                for at, m in enumerate(messages)]
    table = netlink.Records(None, [netlink.Compactor().compact(b"".join(messages))[0]])
    parts = [(Proto.UDP, table.of_family(af), netlink.AddressCache(af))
             for af in (socket.AF_INET, socket.AF_INET6)]
    parts = [part for part in parts if len(part[1])]
    sockets = [s for proto, records, addresses in parts
               for s in records.sockets(proto, addresses)]
    inodes = {s.inode for s in sockets if s.inode}
    processes = [(7, "holder", "root", list(range(3, 3 + len(inodes))), sorted(inodes))]
    owner_map = owners.OwnerMap.from_processes(processes)
    found = row_owners(processes, inodes, set(), [], owner_map)
    fast = io.StringIO()
    jsonout.write_records(fast, parts, found)
    assert fast.getvalue() == _socket_rows(sockets, owner_map, [])
    rows = json.loads(fast.getvalue())
    assert [r["process"] for r in rows if not r["inode"]] == [None] * (len(rows) if alone
                                                                       else 1)


def test_local_endpoints_of_some_rows_are_those_of_the_rows_kept():
    """Records.local_endpoints(keep=) gives what the kept rows' own Records give, for
    each family, for none kept, some and all."""
    messages, _ = _table()
    table = netlink.Records(None, [netlink.Compactor().compact(b"".join(messages))[0]])
    for af in (socket.AF_INET, socket.AF_INET6):
        records, addresses = table.of_family(af), netlink.AddressCache(af)
        rows = list(records.sockets(Proto.TCP, addresses))
        for keep in ([not s.inode for s in rows], [s.state is TcpState.LISTEN for s in rows],
                     [True] * len(rows), [False] * len(rows)):
            kept = {s.local for s, kept in zip(rows, keep, strict=True) if kept}
            assert records.local_endpoints(addresses, keep) == kept
            if kept:
                assert records.where(keep).local_endpoints(addresses) == kept


def test_rows_from_records_without_owners_are_the_socket_paths_bytes():
    messages, _ = _table()
    packed = netlink.Compactor().compact(b"".join(messages))[0]
    parts = [(Proto.TCP, netlink.Records(None, [packed]).of_family(af),
              netlink.AddressCache(af)) for af in (socket.AF_INET, socket.AF_INET6)]
    fast = io.StringIO()
    jsonout.write_records(fast, parts)
    slow = io.StringIO()
    jsonout.write_sockets(slow, [s for proto, records, addresses in parts
                                 for s in records.sockets(proto, addresses)])
    assert fast.getvalue() == slow.getvalue()
    empty = io.StringIO()
    jsonout.write_records(empty, [])
    assert empty.getvalue() == "[]\n"


def test_records_read_in_place_are_the_compacted_ones():
    """Records of any stride (a batch of one message length, as it came) give the
    Sockets and columns of the same reports compacted; a field every report holds
    alike is one Same, read from the raw bytes."""
    messages = [m for m in _messages("netlink_tcp46_together.bin") if len(m) == 124]
    body = b"".join(messages)
    strided = netlink.Records(None, [body], 124)
    compacted = netlink.Records(None, [netlink.Compactor().compact(body)[0]])
    both = netlink.BothFamilies
    assert len(strided) == len(compacted) == len(messages) > 2
    assert list(strided.sockets(Proto.TCP, both())) == \
        list(compacted.sockets(Proto.TCP, both()))
    for af in (socket.AF_INET, socket.AF_INET6):
        a, b = strided.of_family(af), compacted.of_family(af)
        assert (a.stride, b.stride) == (124, netlink.RECORD)
        assert list(a.sockets(Proto.TCP, netlink.AddressCache(af))) == \
            list(b.sockets(Proto.TCP, netlink.AddressCache(af)))
    alike = netlink.Records(None, [messages[0] * 5], 124).columns(both())
    assert isinstance(alike.inode, netlink.Same) and alike.inode.count == 5
    assert list(alike.local_port) == [netlink.Records(None, [messages[0]], 124)
                                      .local_ports()[0]] * 5
    assert [list(batch.sockets(Proto.TCP, both())) for batch in strided.batches(2)] \
        == [list(strided.where([i // 2 == n for i in range(len(strided))])
                 .sockets(Proto.TCP, both())) for n in range((len(strided) + 1) // 2)]
    assert netlink.Records(None, [messages[0] * 3], 124).local_endpoints(
        netlink.AddressCache(messages[0][netlink.AT["idiag_family"]])) == \
        {next(compacted.sockets(Proto.TCP, both())).local}


def test_one_field_list_for_every_json_row():
    """The writers' field list is the schema's (socket_to_dict), in its order."""
    from sockstat.model import Family, Socket

    sock = Socket(Proto.TCP, Family.INET, TcpState.ESTABLISHED, Endpoint("127.0.0.1", 1),
                  Endpoint("127.0.0.1", 2))
    assert [name for name, _ in jsonout.ROW_FIELDS] == list(socket_to_dict(sock))


COUNTED = r"""
import io, json, re, socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect, netlink
from sockstat.collect.rows import listing_rows
from sockstat.query import Query
from sockstat.render import jsonout

real, calls = netlink.dump, []
def counted(*args, **kwargs):  # the real dump, counted
    calls.append(args)
    return real(*args, **kwargs)
netlink.dump = counted

def both(query):
    calls.clear()
    snap = collect(query, processes=True)
    slow_calls = len(calls)
    slow = io.StringIO(); jsonout.write_sockets(slow, snap.sockets)
    calls.clear()
    rows = listing_rows(query, processes=True)
    fast = io.StringIO(); jsonout.write_records(fast, rows.parts, rows.owners)
    def timers(text):  # a timer counts down between two reads of the table
        return re.sub(r'"timer_ms":\d+', '"timer_ms":0', text)
    return {"slow": slow_calls, "fast": len(calls),
            "same": timers(slow.getvalue()) == timers(fast.getvalue()),
            "rows": len(json.loads(fast.getvalue()))}

query = Query.build(states=["time-wait"])
result = {"none": both(query)}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
c = socket.socket(); c.connect(srv.getsockname())
s, _ = srv.accept(); s.close(); c.recv(1); c.close()
result["one"] = both(query)
srv.close()
print(json.dumps(result))
"""


@NEEDS_NETNS
def test_a_time_wait_listing_with_none_counted_makes_no_dump_on_either_path():
    """`-s time-wait --json` where the namespace's counters say no TIME_WAIT exists:
    neither path walks the kernel's TCP hash (collect() reads the counters first; the
    rows path, which serves that command line, must too), and both write `[]`."""
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", COUNTED],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["none"] == {"slow": 0, "fast": 0, "same": True, "rows": 0}
    assert result["one"]["same"] and result["one"]["rows"] == 1
    assert result["one"]["fast"] >= 1


def test_a_batch_read_in_place_is_only_whole_reports_of_one_length():
    """Compactor.strided on captured bytes: a batch of one report length as it came
    (with or without the dump's DONE); anything else, truncated or malformed, is None,
    so that the dump compacts it or parses it message by message (which raises)."""
    messages = [m for m in _messages("netlink_tcp46_together.bin") if len(m) == 124]
    done = struct.pack("=IHHII", 20, netlink.NLMSG_DONE, 2, 0, 0) + bytes(4)
    body = b"".join(messages)
    strided = netlink.Compactor().strided
    assert strided(body) == (124, body, False)
    assert strided(body + done) == (124, body, True)
    assert strided(done) == (netlink.RECORD, b"", True)
    other = next(m for m in _messages("netlink_tcp46_together.bin") if len(m) != 124)
    bad_family = _patched(messages[0], idiag_family=99)
    bad_state = _patched(messages[0], idiag_state=99)
    # claims less than an inet_diag_msg
    short = struct.pack("=I", netlink.RECORD - 8) + messages[0][4:netlink.RECORD - 8]
    for malformed in (body[:-1], body[:-4], body + other, other + body,
                      body[:124] + bad_family + body[248:], body + bad_state,
                      short, body[:10], body[:-4] + done, body + done[:-4]):
        assert strided(malformed) is None, malformed[:32]
        if netlink.Compactor().compact(malformed) is None:  # not two kinds of report
            with pytest.raises(netlink.ParseError):
                netlink.parse_messages(memoryview(malformed), Proto.TCP,
                                       netlink.BothFamilies(), [])


SHAPES = r"""
import ctypes, io, json, os, re, socket, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "fe80::1/64", "dev", "lo", "nodad"], check=True)
from sockstat.cli.show import unattributed_note
from sockstat.collect import collect
from sockstat.collect.rows import listing_rows
from sockstat.query import Query
from sockstat.render import jsonout

held = []
def listener(address, family=socket.AF_INET, backlog=16):
    srv = socket.socket(family); srv.bind(address); srv.listen(backlog); held.append(srv)
    return srv
lo = socket.if_nametoindex("lo")
scoped = listener(("fe80::1", 0, 0, lo), socket.AF_INET6)  # link-local: a scope id
c = socket.socket(socket.AF_INET6); c.connect(("fe80::1", scoped.getsockname()[1], 0, lo))
held.append(c)
# SYN_RECV: the kernel keeps the request until data comes (TCP_DEFER_ACCEPT)
defer = socket.socket(); defer.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
defer.bind(("127.0.0.7", 0)); defer.listen(16); held.append(defer)
for _ in range(3):
    c = socket.socket(); c.connect(defer.getsockname()); held.append(c)
# a LISTEN with connections in its accept queue (no file yet: named through it)
queued = listener(("::1", 0), socket.AF_INET6)
for i in range(3):
    c = socket.socket(socket.AF_INET6); c.connect(queued.getsockname()); held.append(c)
    if i == 0:
        c.sendall(b"hello")
# an orphan the server closed: FIN_WAIT2 (one with data unsent, FIN_WAIT1, changes its
# queue and timer between two reads)
orphans = listener(("127.0.0.8", 0))
c = socket.socket(); c.connect(orphans.getsockname()); held.append(c)
orphans.accept()[0].close()
b4 = socket.socket(); b4.bind(("127.0.0.1", 0)); held.append(b4)  # bound, inactive
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
u.connect(("127.0.0.1", 9)); held.append(u)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 0)); held.append(u6)
# every connection so far shared with children of names JSON must escape
libc = ctypes.CDLL(None)
wait_here, _keep = os.pipe()
children = []
for name in (b'q"uo\\te', b"ctl\x01\x1f\x7f", b"\xff\xfe\xc3bad", "naïve✓".encode(),
             b"%s%d{}"):
    pid = os.fork()
    if pid == 0:
        libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
        os.read(wait_here, 1); os._exit(0)
    children.append(pid)
def named():
    for pid in children:
        with open(f"/proc/{pid}/comm", "rb") as f:
            if f.read() == b"python\n":
                return False
    return True
for _ in range(200):
    if named():
        break
    time.sleep(0.01)

def racy(text):  # timers count down, probes retransmit between two reads
    return re.sub(r'"(timer_ms|retransmits)":\d+', r'"\1":0', text)

result = []
for states in ([], ["syn-recv"], ["bucket"], ["big"], ["connected"], ["bound-inactive"],
               ["fin-wait-2"]):
    for extra in ({}, {"listening": True}, {"ipv6": True}, {"udp": True}):
        query = Query.build(states=states, **extra)
        for processes in (True, False):
            snap = collect(query, processes=processes)
            slow = io.StringIO(); jsonout.write_sockets(slow, snap.sockets)
            rows = listing_rows(query, processes=processes)
            fast = io.StringIO(); jsonout.write_records(fast, rows.parts, rows.owners)
            result.append({
                "what": f"{states} {extra} processes={processes}",
                "same": racy(slow.getvalue()) == racy(fast.getvalue()),
                # (the command prints it only for a scan: processes named)
                "note": not processes or unattributed_note(snap) == unattributed_note(
                    rows.snapshot),
                "shapes": sorted({(s.state.name, s.inode == 0) for s in snap.sockets}),
                "names": sorted({p.name for s in snap.sockets for p in s.others})})
for pid in children:
    os.kill(pid, 9)
print(json.dumps(result))
"""


@NEEDS_NETNS
def test_rows_from_records_hold_every_shape_and_name_the_socket_path_does():
    """SYN_RECV requests, an accept queue, an orphan, bound-inactive and link-local
    sockets, UDP connected or not, sockets shared with holders whose names need
    escaping (quotes, backslashes, control characters, bytes that are not UTF-8, `%`),
    through every state group and filter the rows path serves: the same bytes."""
    result = in_own_namespaces(SHAPES)
    for check in result:
        assert check["same"] and check["note"], check["what"]
    every = {(state, fileless) for check in result for state, fileless in check["shapes"]}
    assert {("SYN_RECV", True), ("ESTABLISHED", True), ("FIN_WAIT2", True),
            ("LISTEN", False), ("CLOSE", False)} <= every
    assert next(c for c in result if c["what"].startswith("['bound-inactive'] {}"))["shapes"]
    names = {name for check in result for name in check["names"]}
    assert {'q"uo\\te', "ctl\x01\x1f\x7f", "\ufffd\ufffd\ufffdbad", "naïve✓", "%s%d{}"} <= names
