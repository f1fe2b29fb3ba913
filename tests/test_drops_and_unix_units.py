"""The drop detector, the UNIX accept-queue finding, their metrics, and the UNIX/memory
cells of the renderers, on hand-built sockets (below, at and above each threshold).
The real-socket versions are in test_unix_real.py."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from sockstat.diagnose import diagnose
from sockstat.diagnose import drops as drops_mod
from sockstat.diagnose.findings import Scope, Severity
from sockstat.diagnose.thresholds import Thresholds
from sockstat.kernelmodel import KernelChange, KernelSample, Sysctls
from sockstat.model import (
    DropBaseline,
    Endpoint,
    Family,
    ProcessRef,
    Proto,
    SkMemInfo,
    Snapshot,
    Socket,
    TcpState,
    UnixInfo,
    UnixType,
    socket_to_dict,
)
from sockstat.query import Query
from sockstat.render import csvout, fmt, jsonout, metrics, plain

SYSCTLS = Sysctls(somaxconn=4096, rmem_max=212992, rmem_default=212992)
DNS = ProcessRef(pid=77, name="dnsmasq", fd=5, user="dns")


def mem(drops: int, rmem: int = 7680, rcvbuf: int = 8192) -> SkMemInfo:
    return SkMemInfo(rmem, rcvbuf, 0, 212992, 512, 0, 0, 0, drops)


def udp(drops: int, cookie: int = 1, port: int = 5353, **kw) -> Socket:
    return Socket(Proto.UDP, Family.INET, TcpState.CLOSE, Endpoint("127.0.0.1", port),
                  Endpoint("0.0.0.0", 0), inode=100 + cookie, cookie=cookie,
                  process=kw.pop("process", DNS), memory=mem(drops, **kw))


def listener(drops: int, cookie: int = 50) -> Socket:
    return Socket(Proto.TCP, Family.INET, TcpState.LISTEN, Endpoint("0.0.0.0", 80),
                  Endpoint("0.0.0.0", 0), send_q=128, inode=900, cookie=cookie,
                  process=ProcessRef(pid=12, name="nginx"), memory=mem(drops))


def snapshot(sockets, before: dict | None, seconds: float = 1.0) -> Snapshot:
    snap = Snapshot(sockets=list(sockets), taken_at=1000.0 + seconds, source="netlink")
    if before is not None:
        snap.drops_before = DropBaseline(1000.0, before)
    return snap


def kernel(seconds: float = 1.0, rcvbuf_errors: int = 0, in_errors: int = 0) -> KernelChange:
    before = KernelSample(taken_at=10.0, counters={"Udp.RcvbufErrors": 100,
                                                   "Udp.InErrors": 100}, sysctls=SYSCTLS)
    after = KernelSample(taken_at=10.0 + seconds, sysctls=SYSCTLS, counters={
        "Udp.RcvbufErrors": 100 + rcvbuf_errors, "Udp.InErrors": 100 + in_errors})
    return KernelChange(after=after, before=before)


def kinds(findings, kind="socket_drops"):
    return [f for f in findings if f.kind == kind]


def test_drops_over_the_interval_name_the_socket_buffer_and_remedy():
    s = udp(drops=20_094)
    (f,) = kinds(drops_mod.detect(snapshot([s], {s.key: 100}), kernel(), Thresholds()))
    assert f.severity is Severity.CRITICAL  # 19,994/s >= 100/s
    assert f.summary == ("udp 127.0.0.1:5353 (dnsmasq/77) dropped 19,994 datagrams in "
                         "1.0 s: its receive buffer (8 KiB) is full, the program reads too "
                         "slowly")
    ev = f.evidence
    assert (ev["drops"], ev["drops_total"], ev["rate_per_s"]) == (19_994, 20_094, 19_994.0)
    assert (ev["rcvbuf"], ev["rmem_alloc"], ev["pid"]) == (8192, 7680, 77)
    assert (ev["rmem_max"], ev["rmem_default"]) == (212992, 212992)
    assert "SO_REUSEPORT" in f.remedy and "rmem_max = 212,992" in f.remedy
    assert f.sockets == (s,) and f.scope is Scope.SOCKETS


def test_drop_thresholds_below_at_and_above():
    t = Thresholds(drops_warn=5, drops_crit_rate=10.0)
    base = {udp(0).key: 0}
    assert not kinds(drops_mod.detect(snapshot([udp(4)], base), None, t))
    (warn,) = kinds(drops_mod.detect(snapshot([udp(5)], base), None, t))
    assert warn.severity is Severity.WARNING
    (crit,) = kinds(drops_mod.detect(snapshot([udp(10)], base), None, t))
    assert crit.severity is Severity.CRITICAL
    # the same 10 drops over 2 s is 5/s: a warning
    (slow,) = kinds(drops_mod.detect(snapshot([udp(10)], base, seconds=2.0), None, t))
    assert slow.severity is Severity.WARNING and slow.evidence["rate_per_s"] == 5.0


def test_no_baseline_or_a_new_socket_or_old_drops_are_not_findings():
    s = udp(drops=500)
    assert not drops_mod.detect(snapshot([s], None), None, Thresholds())
    assert not drops_mod.detect(snapshot([s], {("c", 999): 0}), None, Thresholds())
    assert not drops_mod.detect(snapshot([s], {s.key: 500}), None, Thresholds())
    no_memory = replace(s, memory=None)
    assert not drops_mod.detect(snapshot([no_memory], {s.key: 0}), None, Thresholds())


def test_a_tcp_listener_that_drops_is_a_finding_but_a_connection_is_not():
    lst = listener(drops=30)
    conn = replace(listener(drops=30, cookie=51), state=TcpState.ESTABLISHED)
    found = kinds(drops_mod.detect(snapshot([lst, conn], {lst.key: 0, conn.key: 0}), None,
                                   Thresholds()))
    assert [f.sockets for f in found] == [(lst,)]
    assert found[0].summary.startswith("tcp listener 0.0.0.0:80 (nginx/12) dropped 30 "
                                       "packets")
    assert "backlog" in found[0].remedy


def test_host_udp_errors_with_no_socket_in_view_is_a_host_finding():
    quiet = udp(drops=0)
    (f,) = kinds(drops_mod.detect(snapshot([quiet], {quiet.key: 0}),
                                  kernel(rcvbuf_errors=40, in_errors=41), Thresholds()),
                 "udp_drops_host")
    assert f.scope is Scope.HOST and f.severity is Severity.WARNING
    assert f.evidence["udp_rcvbuf_errors_delta"] == 40
    assert f.evidence["udp_in_errors_delta"] == 41
    assert "namespace" in f.remedy
    # a socket in view that dropped explains the counters: no host finding
    loud = udp(drops=40)
    got = drops_mod.detect(snapshot([loud], {loud.key: 0}), kernel(rcvbuf_errors=40),
                           Thresholds())
    assert kinds(got) and not kinds(got, "udp_drops_host")
    # counters flat: nothing
    assert not drops_mod.detect(snapshot([quiet], {quiet.key: 0}), kernel(), Thresholds())
    # a filtered check leaves host findings out
    assert not kinds(diagnose(snapshot([quiet], {quiet.key: 0}),
                              kernel(rcvbuf_errors=40), host=False), "udp_drops_host")


def unix_listener(queued: int, backlog: int, path="/run/php/php-fpm.sock") -> Socket:
    return Socket(Proto.UNIX, Family.UNIX, TcpState.LISTEN, Endpoint(path, 0),
                  Endpoint("", 0), recv_q=queued, send_q=backlog, inode=4711, cookie=9,
                  process=ProcessRef(pid=812, name="php-fpm"),
                  unix=UnixInfo(UnixType.STREAM, name=path))


def accept_findings(sock):
    snap = Snapshot(sockets=[sock], taken_at=0.0, source="netlink")
    return [f for f in diagnose(snap, None) if f.kind == "accept_queue"]


def test_unix_accept_queue_full_at_and_below_the_warning():
    (full,) = accept_findings(unix_listener(3, 2))
    assert full.severity is Severity.CRITICAL
    assert full.summary == ("accept queue of /run/php/php-fpm.sock is full: 3 waiting, "
                            "backlog 2 (php-fpm/812)")
    assert full.evidence["path"] == "/run/php/php-fpm.sock"
    assert full.evidence["proto"] == "unix" and full.evidence["pid"] == 812
    assert full.evidence["listen_overflows_delta"] is None  # no kernel counter for UNIX
    assert "listen.backlog" in full.remedy and "pm.max_children" in full.remedy
    assert "Resource temporarily unavailable" in full.explanation
    (warn,) = accept_findings(unix_listener(8, 10))  # 80%: the default warning level
    assert warn.severity is Severity.WARNING
    assert not accept_findings(unix_listener(7, 10))
    assert not accept_findings(unix_listener(0, 10))


def test_metrics_unix_listeners_and_socket_drops_are_bounded():
    sockets = [unix_listener(i, 10, path=f"/run/s{i}.sock") for i in range(5)]
    sockets += [udp(drops=10 * i, cookie=i, port=5000 + i) for i in range(1, 6)]
    sockets += [listener(drops=7)]
    fams = {f.name: f for f in metrics.build(metrics.Collection(
        snapshot=Snapshot(sockets=sockets, taken_at=0.0, source="netlink")), top=2)}
    length = fams["sockstat_unix_listen_queue_length"]
    assert length.value(path="/run/s4.sock") == 4 and length.value(path="other") == 0 + 1 + 2
    assert fams["sockstat_unix_listen_backlog"].value(path="/run/s4.sock") == 10
    drops = fams["sockstat_socket_drops"]
    assert drops.kind == metrics.COUNTER and drops.sample_name == "sockstat_socket_drops_total"
    assert drops.value(proto="udp", local="127.0.0.1:5005", process="dnsmasq", pid="77") == 50
    assert drops.value(proto="other", local="other", process="other", pid="") == 10 + 20 + 30 + 7
    assert len(drops.samples) == 3
    # UNIX sockets are not counted among the TCP/UDP sockets, but by type and state
    assert sum(v for _, v in fams["sockstat_sockets"].samples) == 6
    unix_counts = fams["sockstat_unix_sockets"]
    assert unix_counts.value(type="stream", state="LISTEN") == 5
    assert unix_counts.value(type="dgram", state="UNCONN") == 0
    assert len(unix_counts.samples) == 9


def unix_pair():
    a = Socket(Proto.UNIX, Family.UNIX, TcpState.ESTABLISHED, Endpoint("", 0),
               Endpoint("", 0), inode=11, cookie=1,
               unix=UnixInfo(UnixType.STREAM, peer_inode=12),
               peer_process=ProcessRef(pid=5, name="nginx"))
    b = Socket(Proto.UNIX, Family.UNIX, TcpState.ESTABLISHED, Endpoint("/run/a.sock", 0),
               Endpoint("", 0), inode=12, cookie=2,
               unix=UnixInfo(UnixType.STREAM, name="/run/a.sock", peer_inode=11))
    return a, b


def test_unix_rows_in_text_json_and_csv():
    a, b = unix_pair()
    lines = list(plain.render([a, b], limit_per_state=None, colour=False))
    text = "\n".join(lines)
    assert "u_str  (unnamed) 11" in text and "(unnamed) 12 nginx/5" in text
    assert "/run/a.sock 12" in text
    out = io.StringIO()
    jsonout.write_sockets(out, [a])
    (row,) = json.loads(out.getvalue())
    assert row == socket_to_dict(a)
    assert (row["proto"], row["family"], row["unix_type"]) == ("unix", "unix", "stream")
    assert row["path"] is None and row["peer_inode"] == 12
    assert row["peer_process"]["pid"] == 5 and "memory" not in row
    out = io.StringIO()
    csvout.write_sockets(out, [b])
    header, line = out.getvalue().splitlines()
    assert dict(zip(header.split(","), line.split(","), strict=True))["path"] == "/run/a.sock"


def test_memory_columns_only_when_asked():
    s = udp(drops=3)
    plain_row = plain.row_cells(s)
    with_memory = plain.row_cells(s, extra=fmt.MEMORY_COLUMNS)
    assert len(with_memory) == len(plain_row) + 7 and with_memory[-1] == "3"
    assert with_memory[len(plain_row)] == "7680/8192"
    out = io.StringIO()
    csvout.write_sockets(out, [s], memory=True)
    header, line = out.getvalue().splitlines()
    assert dict(zip(header.split(","), line.split(","), strict=True))["drops"] == "3"
    assert "drops" not in csvout.CSV_COLUMNS


def test_queries_over_unix_sockets():
    a, b = unix_pair()
    assert not Query().matches(a)  # UNIX sockets only when asked for
    x = Query.build(unix=True)
    assert x.matches(a) and x.matches(b)
    by_path = Query.build(paths=["/run/*.sock"])
    assert by_path.protos == {Proto.UNIX} and by_path.matches(b) and not by_path.matches(a)
    assert not Query.build(unix=True, ports=["80"]).matches(b)
    assert not Query.build(tcp=True, paths=["*"]).matches(udp(0))
    assert Proto.UNIX in Query.build(tcp=True, paths=["*"]).protos
    listening = Query.build(unix=True, listening=True)
    assert listening.kernel_states(Proto.UNIX) == {TcpState.LISTEN, TcpState.CLOSE}
    assert Query.build() == Query()  # the default listing is unchanged
