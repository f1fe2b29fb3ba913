"""The metric families (sockstat.render.metrics) on hand-built sockets and a fixture
/proc tree: names, HELP, units, zero-filling and bounded label cardinality."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import FIXTURES, counting_splits, make_snapshot, make_socket

from sockstat.collect import kernel
from sockstat.diagnose.findings import Finding, Severity
from sockstat.model import Family, ProcessRef, Proto, TcpState
from sockstat.render import metrics
from sockstat.render.metrics import OTHER, Collection

NAME = re.compile(r"^sockstat_[a-z0-9_]+$")


def sock(state, local=("10.0.0.1", 40000), remote=("10.0.0.9", 5432), proto=Proto.TCP,
         family=Family.INET, recv_q=0, send_q=0, process=None):
    return make_socket(state, local, remote, proto=proto, family=family, recv_q=recv_q,
                       send_q=send_q, process=process)


def snap(sockets):
    return make_snapshot(sockets)


def by_name(families):
    return {f.name: f for f in families}


@pytest.fixture
def fake_proc(tmp_path):
    """A /proc tree made of the captured kernel files, read by the real readers."""
    (tmp_path / "net").mkdir()
    shutil.copy(FIXTURES / "kernel_netstat.txt", tmp_path / "net" / "netstat")
    shutil.copy(FIXTURES / "kernel_snmp.txt", tmp_path / "net" / "snmp")
    shutil.copy(FIXTURES / "kernel_sockstat.txt", tmp_path / "net" / "sockstat")
    shutil.copy(FIXTURES / "kernel_sockstat6.txt", tmp_path / "net" / "sockstat6")
    sysctls = {"ipv4/ip_local_port_range": "32768\t60999", "ipv4/ip_local_reserved_ports":
               "40000-40999", "ipv4/tcp_max_tw_buckets": "262144", "core/somaxconn": "4096",
               "ipv4/tcp_fin_timeout": "60", "ipv4/tcp_tw_reuse": "2"}
    for rel, value in sysctls.items():
        path = tmp_path / "sys" / "net" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def test_socket_counts_are_zero_filled_and_syn_recv_merges_new_syn_recv():
    fam = metrics.socket_counts([
        sock(TcpState.CLOSE_WAIT), sock(TcpState.CLOSE_WAIT),
        sock(TcpState.NEW_SYN_RECV), sock(TcpState.SYN_RECV, family=Family.INET6),
        sock(TcpState.CLOSE, proto=Proto.UDP),
    ])
    assert fam.value(proto="tcp", family="ipv4", state="CLOSE_WAIT") == 2
    assert fam.value(proto="tcp", family="ipv4", state="SYN_RECV") == 1
    assert fam.value(proto="tcp", family="ipv6", state="SYN_RECV") == 1
    assert fam.value(proto="udp", family="ipv4", state="UNCONN") == 1
    assert fam.value(proto="tcp", family="ipv6", state="TIME_WAIT") == 0
    assert fam.value(proto="tcp", family="ipv4", state="NEW_SYN_RECV") is None
    # every TCP state for both families plus UNCONN/ESTABLISHED for UDP, always present
    assert len(fam.samples) == 2 * len(metrics.TCP_STATES) + 2 * len(metrics.UDP_STATES)


def test_listeners_sum_reuseport_groups_and_other_is_the_fullest_of_the_rest():
    listening = [
        sock(TcpState.LISTEN, local=("0.0.0.0", 80), remote=("0.0.0.0", 0), recv_q=5,
             send_q=128),
        sock(TcpState.LISTEN, local=("0.0.0.0", 80), remote=("0.0.0.0", 0), recv_q=2,
             send_q=128),  # SO_REUSEPORT: a second socket on the same address:port
        sock(TcpState.LISTEN, local=("127.0.0.1", 9000), remote=("0.0.0.0", 0), recv_q=9,
             send_q=10),
    ] + [sock(TcpState.LISTEN, local=("::", 7000 + i), remote=("::", 0), send_q=4096)
         for i in range(5)] + [
        sock(TcpState.LISTEN, local=("::", 6000), remote=("::", 0), recv_q=1, send_q=100)]
    length, backlog = metrics.listeners(listening, top=2)
    assert length.value(address="127.0.0.1", port="9000") == 9  # fullest first (90%)
    assert length.value(address="0.0.0.0", port="80") == 7
    assert backlog.value(address="0.0.0.0", port="80") == 256
    # the rest: not a sum of unrelated backlogs (5 x 4096 + 100) but the fullest of them
    assert (length.value(address=OTHER, port=OTHER),
            backlog.value(address=OTHER, port=OTHER)) == (1, 100)
    assert len(length.samples) == len(backlog.samples) == 3
    quiet_length, quiet_backlog = metrics.listeners(listening[:3], top=2)
    assert quiet_length.value(address=OTHER, port=OTHER) == 0
    assert quiet_backlog.value(address=OTHER, port=OTHER) == 0


def test_close_wait_per_process_is_top_n_plus_other_and_unattributed():
    procs = [ProcessRef(pid=100 + i, name=f"app{i}") for i in range(30)]
    sockets = []
    for i, proc in enumerate(procs):
        sockets += [sock(TcpState.CLOSE_WAIT, process=proc)] * (i + 1)
    sockets += [sock(TcpState.CLOSE_WAIT)] * 3  # nobody visible holds these
    sockets += [sock(TcpState.ESTABLISHED, process=procs[0])] * 50  # not CLOSE_WAIT
    fam = metrics.close_wait_by_process(sockets, top=5)
    assert len(fam.samples) == 6  # bounded: 5 + other, whatever the host has
    assert fam.value(process="app29", pid="129", service="app29", container="") == 30
    assert fam.value(process="app25", pid="125", service="app25", container="") == 26
    assert fam.value(process="app24", pid="124", service="app24", container="") is None
    # "other" is the largest folded count, so a rule on the count may include it
    assert fam.value(process=OTHER, pid="", service=OTHER, container="") == 25


def test_close_wait_of_forked_children_is_one_series_per_service():
    from sockstat.model import Service

    master = Service(key=(500, "/usr/bin/socat"), name="socat", master_pid=500)
    children = [ProcessRef(pid=600 + i, name="socat") for i in range(30)]
    sockets = [sock(TcpState.CLOSE_WAIT, process=child) for child in children]
    lone = ProcessRef(pid=900, name="java")
    sockets += [sock(TcpState.CLOSE_WAIT, process=lone)] * 2
    services = {child.pid: master for child in children}
    # a top of 1 would have folded 30 per-pid series of 1 into "other" before
    fam = metrics.close_wait_by_process(sockets, top=1, services=services)
    assert fam.value(process="socat", pid="500", service="socat", container="") == 30
    assert fam.value(process=OTHER, pid="", service=OTHER, container="") == 2
    assert len(fam.samples) == 2


def test_close_wait_other_bucket_exists_on_a_quiet_host():
    fam = metrics.close_wait_by_process([sock(TcpState.ESTABLISHED)], top=10)
    assert fam.samples == [((OTHER, "", OTHER, ""), 0)]


def test_top_with_other_breaks_ties_by_key_so_series_do_not_flap():
    counts = {"b": 1, "a": 1, "c": 1}
    assert metrics.top_with_other(counts, 2) == [("a", 1), ("b", 1), (OTHER, 1)]
    assert metrics.top_with_other({}, 2) == [(OTHER, 0)]


def test_destinations_without_established_or_time_wait_take_no_top_slot(fake_proc):
    sysctls = kernel.read_sysctls(str(fake_proc))
    connecting = [sock(TcpState.SYN_SENT, local=("10.0.0.1", 33000 + i),
                       remote=("10.0.0.7", 443)) for i in range(20)]
    db = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 34000 + i)) for i in range(2)]
    fam, ratio = metrics.destinations([*connecting, *db], sysctls, top=1)
    assert fam.value(destination="10.0.0.9:5432", state="ESTABLISHED") == 2
    assert fam.value(destination="10.0.0.7:443", state="ESTABLISHED") is None
    # its ports still count where ports are the point
    assert ratio.value(destination=OTHER) == 20 / sysctls.usable_ports


def test_destinations_count_outgoing_connections_only(fake_proc):
    sysctls = kernel.read_sysctls(str(fake_proc))
    listener = sock(TcpState.LISTEN, local=("10.0.0.1", 8080), remote=("0.0.0.0", 0))
    inbound = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 8080),
                    remote=("192.0.2.7", 50000 + i)) for i in range(40)]
    db = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 33000 + i)) for i in range(3)]
    db += [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 34000 + i)) for i in range(7)]
    cache = [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 35000 + i),
                  remote=("10.0.0.8", 6379)) for i in range(2)]
    reserved = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 40500),
                     remote=("10.0.0.8", 6379))]  # in ip_local_reserved_ports: not ephemeral
    fam, ratio = metrics.destinations([listener, *inbound, *db, *cache, *reserved], sysctls,
                                      top=1)
    assert fam.value(destination="10.0.0.9:5432", state="ESTABLISHED") == 3
    assert fam.value(destination="10.0.0.9:5432", state="TIME_WAIT") == 7
    assert fam.value(destination=OTHER, state="TIME_WAIT") == 2
    assert fam.value(destination=OTHER, state="ESTABLISHED") == 0
    assert not any(d.startswith("192.0.2.7") for (d, _), _ in fam.samples)
    usable = (60999 - 32768 + 1) - 1000
    assert sysctls.usable_ports == usable
    assert ratio.value(destination="10.0.0.9:5432") == pytest.approx(10 / usable)
    assert ratio.value(destination=OTHER) == pytest.approx(2 / usable)


def test_destinations_top_n_is_top_with_others_ranking_with_many_ties(fake_proc):
    """The top destinations are those top_with_other ranks first (count, then the
    name), one-socket groups and bigger ones mixed, ESTABLISHED and TIME_WAIT."""
    import random

    sysctls = kernel.read_sysctls(str(fake_proc))
    rng = random.Random(15)
    table = []
    for i in range(300):  # 300 destinations with 1-3 sockets each, many tied
        for j in range(rng.choice((1, 1, 1, 2, 3))):
            state = rng.choice((TcpState.ESTABLISHED, TcpState.TIME_WAIT))
            table.append(sock(state, local=(f"10.0.0.{1 + j}", 33000 + 10 * i + j),
                              remote=("10.0.1.9", 1000 + rng.randrange(300))))
    rng.shuffle(table)
    shown: dict[str, int] = {}
    for s in table:
        dest = f"{s.remote.address}:{s.remote.port}"
        shown[dest] = shown.get(dest, 0) + 1
    for top in (0, 1, 10, 50, 1000):
        fam, _ = metrics.destinations(table, sysctls, top=top)
        named = list(dict.fromkeys(d for (d, _), _ in fam.samples if d != OTHER))
        assert named == [d for d, _ in metrics.top_with_other(shown, top)[:-1]], top


def test_ephemeral_ratio_is_per_local_address_the_kernel_limit(fake_proc):
    sysctls = kernel.read_sysctls(str(fake_proc))
    a = [sock(TcpState.ESTABLISHED, local=("10.0.0.1", 33000 + i)) for i in range(6)]
    b = [sock(TcpState.ESTABLISHED, local=("10.0.0.2", 33000 + i)) for i in range(4)]
    fam, ratio = metrics.destinations(a + b, sysctls, top=5)
    assert fam.value(destination="10.0.0.9:5432", state="ESTABLISHED") == 10
    # each local address has its own range: the busiest one is what runs out first
    assert ratio.value(destination="10.0.0.9:5432") == pytest.approx(6 / sysctls.usable_ports)


def test_no_ratio_without_a_port_range():
    families = metrics.destinations([sock(TcpState.ESTABLISHED)], None, top=5)
    assert [f.name for f in families] == ["sockstat_destination_sockets"]


def _finding(kind, severity):
    return Finding(kind=kind, severity=severity, subject="x", summary="x", evidence={},
                   explanation="x", remedy="x")


def test_findings_by_kind_and_severity_zero_filled():
    fam = metrics.findings_by_kind(
        [_finding("close_wait_leak", Severity.WARNING),
         _finding("close_wait_leak", Severity.WARNING),
         _finding("accept_queue", Severity.CRITICAL),
         _finding("accept_queue", Severity.OK)],
        kinds=("close_wait_leak", "time_wait_pileup"))
    assert fam.value(kind="close_wait_leak", severity="warning") == 2
    assert fam.value(kind="close_wait_leak", severity="critical") == 0
    assert fam.value(kind="accept_queue", severity="critical") == 1
    assert fam.value(kind="time_wait_pileup", severity="warning") == 0
    assert fam.value(kind="accept_queue", severity="ok") is None


def test_kernel_counters_totals_and_sysctls_from_a_fixture_proc_tree(fake_proc):
    sample = kernel.read_sample(str(fake_proc))
    fams = by_name(metrics.kernel_families(sample, page_size=4096))
    overflows = fams["sockstat_kernel_tcp_listen_overflows"]
    assert overflows.kind == metrics.COUNTER
    assert overflows.sample_name == "sockstat_kernel_tcp_listen_overflows_total"
    assert overflows.value() == sample.counters["TcpExt.ListenOverflows"]
    assert fams["sockstat_kernel_tcp_active_opens"].value() == sample.counters["Tcp.ActiveOpens"]
    assert fams["sockstat_kernel_tcp_time_wait_sockets"].value() == sample.sockstat["TCP.tw"]
    assert fams["sockstat_kernel_tcp_memory_bytes"].value() == sample.sockstat["TCP.mem"] * 4096
    inuse = fams["sockstat_kernel_sockets_in_use"]
    assert inuse.value(proto="tcp", family="ipv4") == sample.sockstat["TCP.inuse"]
    assert inuse.value(proto="tcp", family="ipv6") == sample.sockstat["TCP6.inuse"]
    assert fams["sockstat_sysctl_somaxconn"].value() == 4096
    assert fams["sockstat_sysctl_tcp_fin_timeout_seconds"].value() == 60
    assert "net.ipv4.tcp_fin_timeout" in fams["sockstat_sysctl_tcp_fin_timeout_seconds"].help
    assert fams["sockstat_sysctl_ip_local_port_range_low"].value() == 32768
    assert fams["sockstat_sysctl_ip_local_port_range_high"].value() == 60999
    assert fams["sockstat_ephemeral_ports_usable"].value() == 28232 - 1000
    # sysctls the tree lacks are left out, not exported as 0
    assert "sockstat_sysctl_tcp_max_orphans" not in fams


def _everything(fake_proc, top=3):
    sample = kernel.read_sample(str(fake_proc))
    procs = [ProcessRef(pid=10 + i, name=f"p{i}") for i in range(8)]
    sockets = [sock(TcpState.CLOSE_WAIT, process=p) for p in procs]
    sockets += [sock(TcpState.LISTEN, local=("0.0.0.0", 80 + i), remote=("0.0.0.0", 0),
                     send_q=128) for i in range(6)]
    sockets += [sock(TcpState.TIME_WAIT, local=("10.0.0.1", 33000 + i),
                     remote=("10.0.0.9", 1000 + i)) for i in range(9)]
    sockets += [sock(TcpState.CLOSE, proto=Proto.UDP, family=Family.INET6,
                     local=("::", 53), remote=("::", 0))]
    collection = Collection(snapshot=snap(sockets),
                            findings=[_finding("close_wait_leak", Severity.WARNING)],
                            kernel=sample, duration_seconds=0.25,
                            finding_kinds=("close_wait_leak",))
    return metrics.build(collection, top=top, version="9.9.9")


def test_every_family_follows_the_naming_conventions_and_has_help(fake_proc):
    families = _everything(fake_proc)
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    for fam in families:
        assert NAME.match(fam.name), fam.name
        assert not fam.name.endswith("_total"), "the exposition adds _total to counters"
        assert len(fam.help) > 20 and fam.help[0].isupper(), fam.name
        assert fam.kind in (metrics.GAUGE, metrics.COUNTER)
        keys = [labels for labels, _ in fam.samples]
        assert len(keys) == len(set(keys)), f"duplicate series in {fam.name}"
        assert all(len(labels) == len(fam.labels) for labels in keys)
        if fam.kind == metrics.COUNTER:  # kernel counters, and each socket's own drops
            assert fam.name.startswith("sockstat_kernel_") or fam.name == "sockstat_socket_drops"
    fams = by_name(families)
    assert fams["sockstat_scrape_duration_seconds"].value() == 0.25
    assert fams["sockstat_build_info"].value(version="9.9.9") == 1
    assert fams["sockstat_collector_success"].value(collector="sockets") == 1
    assert fams["sockstat_findings"].value(kind="close_wait_leak", severity="warning") == 1


def test_label_cardinality_is_bounded_by_top(fake_proc):
    families = _everything(fake_proc, top=3)
    fams = by_name(families)
    assert len(fams["sockstat_close_wait_sockets"].samples) == 4
    assert len(fams["sockstat_listen_queue_length"].samples) == 4
    assert len(fams["sockstat_destination_sockets"].samples) == 4 * 2
    assert len(fams["sockstat_ephemeral_ports_used_ratio"].samples) == 4


def test_failed_parts_are_left_out_and_reported():
    collection = Collection(snapshot=None, errors={"sockets": "boom", "findings": "no"})
    fams = by_name(metrics.build(collection))
    success = fams["sockstat_collector_success"]
    assert success.value(collector="sockets") == 0
    assert success.value(collector="findings") == 0
    assert success.value(collector="kernel") == 1
    assert "sockstat_sockets" not in fams


def _exposition(families) -> str:
    from prometheus_client.registry import CollectorRegistry

    from sockstat.exporter import exposition, to_prometheus

    class Static:
        def collect(self):
            yield from to_prometheus(families)

    registry = CollectorRegistry()
    registry.register(Static())
    return exposition(registry).decode()


def test_exposition_round_trips_through_the_prometheus_parser(fake_proc):
    from prometheus_client.parser import text_string_to_metric_families

    text = _exposition(_everything(fake_proc))
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["sockstat_kernel_tcp_listen_overflows"].type == "counter"
    assert any(s.name == "sockstat_kernel_tcp_listen_overflows_total"
               for s in parsed["sockstat_kernel_tcp_listen_overflows"].samples)
    assert all(f.documentation for f in parsed.values())
    assert "# HELP sockstat_sockets Sockets by protocol" in text


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package: prometheus)")
def test_promtool_check_metrics_passes(fake_proc):
    text = _exposition(_everything(fake_proc))
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", "promtool lint warnings"


def test_the_detectors_split_is_handed_to_the_destination_families(monkeypatch):
    """One split per judged table: the TIME_WAIT detector's split (made by the
    diagnosis's index) comes with the verdict, and the per-destination families built
    from it are those a split of their own gives."""
    from sockstat.observe import Judge

    listener = sock(TcpState.LISTEN, local=("10.0.0.1", 5432), remote=("0.0.0.0", 0))
    table = [listener, sock(TcpState.ESTABLISHED), sock(TcpState.TIME_WAIT,
                                                        local=("10.0.0.1", 40001)),
             sock(TcpState.TIME_WAIT, local=("10.0.0.1", 5432), remote=("10.0.0.7", 41000))]
    made = counting_splits(monkeypatch)
    verdict = Judge().judge(snap(table))
    assert made == [table] and verdict.sides is not None
    assert set(verdict.sides.clients) == {("10.0.0.1", "10.0.0.9", 5432)}
    assert list(verdict.sides.servers) == [5432]
    after = verdict.kernel.after if verdict.kernel is not None else None
    shared = metrics.build(Collection(snapshot=snap(table), kernel=after,
                                      sides=verdict.sides))
    assert len(made) == 1  # the families split nothing of their own
    own = metrics.build(Collection(snapshot=snap(table), kernel=after))
    assert len(made) == 2

    def destinations(families):
        return [(f.name, f.labels, f.samples) for f in families
                if f.name.startswith("sockstat_destination")]

    assert destinations(own) and destinations(shared) == destinations(own)


def test_the_index_splits_once_per_sysctls():
    """SocketIndex.sides(): one split of the table for given sysctls, made again for
    other ones (another port range is another split); without a detector asking, no
    verdict carries one."""
    from sockstat.diagnose.index import SocketIndex
    from sockstat.kernelmodel import Sysctls
    from sockstat.observe import Judgement

    table = [sock(TcpState.ESTABLISHED), sock(TcpState.ESTABLISHED,
                                              local=("10.0.0.1", 40002))]
    found = SocketIndex(table)
    wide = Sysctls(port_range=(32768, 60999))
    first = found.sides(wide)
    assert found.sides(Sysctls(port_range=(32768, 60999))) is first
    narrow = found.sides(Sysctls(port_range=(40002, 40002)))
    assert narrow is not first
    assert [len(m) for m in first.clients.values()] == [2]
    assert [len(m) for m in narrow.clients.values()] == [1]
    assert Judgement([], None).sides is None
