"""The listing's row path on a real table, in network and PID namespaces of the test's
own: every shape of socket (IPv4, IPv6, IPv4-mapped, listeners, connections, CLOSE_WAIT
with data queued, TIME_WAIT named through its listener and without one, UDP; with and
without a process, --memory, -i) written by the fast JSON writer is byte for byte what
encoding the documented schema (socket_to_dict, docs/json.md) gives, and the rows built
from whole compacted batches are the one-by-one parser's rows of the same bytes."""

from __future__ import annotations

from conftest import NEEDS_NETNS, TABLE_MAKERS, in_own_namespaces

# Runs inside `unshare --net --pid --fork --mount-proc`: nothing else lives there, so the
# table and the owner scan hold the script's own sockets only.
SCRIPT = r"""
import io, json, socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from sockstat.collect import collect, netlink
from sockstat.model import Proto, TcpState, socket_to_dict
from sockstat.query import Query
from sockstat.render import jsonout

""" + TABLE_MAKERS + r"""
v4 = listener("127.0.0.1", socket.AF_INET)
pairs(v4, "127.0.0.1", socket.AF_INET, 30, close_wait=3)
time_wait(v4, "127.0.0.1", socket.AF_INET, 10)  # named through the listener, kept
v6 = listener("::1", socket.AF_INET6)
pairs(v6, "::1", socket.AF_INET6, 20, close_wait=2)
time_wait(v6, "::1", socket.AF_INET6, 5)
dual = listener("::", socket.AF_INET6, v6only=0)  # 127.0.0.1 arrives as ::ffff:127.0.0.1
pairs(dual, "127.0.0.1", socket.AF_INET, 10)
gone = listener("127.0.0.2", socket.AF_INET)
time_wait(gone, "127.0.0.2", socket.AF_INET, 10)
gone.close()  # these TIME_WAITs are named by nobody
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
held.append(udp)

built = []
bulk = netlink.Records.sockets
def counted(self, *args):
    built.append(len(self))
    return bulk(self, *args)
netlink.Records.sockets = counted

result = {"checks": []}
for name, options in (("processes", dict(processes=True)), ("bare", {}),
                      ("memory", dict(processes=True, memory=True)),
                      ("info", dict(processes=True, tcp_info=True))):
    built.clear()
    snap = collect(Query(), **options)
    out = io.StringIO()
    jsonout.write_sockets(out, snap.sockets)
    text = out.getvalue()
    schema = "[" + ",\n".join(jsonout._encode_obj(socket_to_dict(s))
                              for s in snap.sockets) + "]\n"
    shapes = sorted({(s.proto.value, s.family.name, s.state.name, s.process is not None,
                      s.process is not None and s.process.via_listener, s.recv_q > 0)
                     for s in snap.sockets})
    result["checks"].append({"name": name, "identical": text == schema,
                             "loads": json.loads(text) == [socket_to_dict(s)
                                                           for s in snap.sockets],
                             "rows": len(snap.sockets), "bulk_rows": sum(built),
                             "shapes": shapes,
                             # TIME_WAIT mini-sockets have no memory to report
                             "memory": sum(s.memory is not None for s in snap.sockets
                                           if s.state is not TcpState.TIME_WAIT),
                             "full": sum(s.state is not TcpState.TIME_WAIT
                                         for s in snap.sockets),
                             "info": sum(s.tcp_info is not None for s in snap.sockets)})

# every real batch: Sockets built from the compacted records == the parser's, one by one
same = compacted = 0
compactor = netlink.Compactor()
for request, addresses in (
        (netlink.build_both_families_request(0xFFFFFFFF), netlink.BothFamilies),
        (netlink.build_request(socket.AF_INET6, socket.IPPROTO_TCP, 0xFFFFFFFF),
         lambda: netlink.AddressCache(socket.AF_INET6))):
    nl = netlink.open_socket()
    nl.send(request)
    for batch in netlink.batches(nl):
        one = []
        done = netlink.parse_messages(batch, Proto.TCP, addresses(), one)
        packed = compactor.compact(batch)
        if packed is not None:
            compacted += 1
            rows = list(netlink.Records(None, [packed[0]]).sockets(Proto.TCP, addresses()))
            same += rows == one and packed[1] == done
        if done:
            break
    nl.close()
result["batches"], result["same"] = compacted, same
print(json.dumps(result))
"""


@NEEDS_NETNS
def test_json_rows_are_the_schemas_bytes_on_every_shape_of_real_socket():
    result = in_own_namespaces(SCRIPT)
    checks = {c["name"]: c for c in result["checks"]}
    for check in checks.values():
        assert check["identical"] and check["loads"], check["name"]
        assert check["rows"] > 140
    shapes = {tuple(s) for s in checks["processes"]["shapes"]}
    families = {(family, state) for _, family, state, *_ in shapes}
    assert {("INET", "LISTEN"), ("INET6", "LISTEN"), ("INET", "ESTABLISHED"),
            ("INET6", "ESTABLISHED"), ("INET", "TIME_WAIT"), ("INET6", "TIME_WAIT"),
            ("INET", "CLOSE_WAIT"), ("INET6", "CLOSE_WAIT"), ("INET", "CLOSE")} <= families
    assert ("tcp", "INET", "TIME_WAIT", True, True, False) in shapes  # via its listener
    assert ("tcp", "INET", "TIME_WAIT", False, False, False) in shapes  # nobody's
    assert ("tcp", "INET", "CLOSE_WAIT", True, False, True) in shapes  # data queued
    assert all(owned for _, _, state, owned, *_ in shapes if state != "TIME_WAIT")
    assert not any(owned for _, _, _, owned, *_ in checks["bare"]["shapes"])
    # the default rows came from whole compacted batches; --memory and -i rows, which
    # carry attributes, from the one-by-one parser
    for name in ("processes", "bare"):
        assert checks[name]["bulk_rows"] >= checks[name]["rows"] - 10  # UDP: its own dump
    assert checks["memory"]["memory"] == checks["memory"]["full"] > 100
    assert checks["info"]["info"] > 0
    assert result["batches"] >= 2 and result["same"] == result["batches"]
