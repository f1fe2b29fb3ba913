"""sockstat.collect.kernel: parsers on captured and malformed /proc text, readers on a
fixture procfs tree, and the sample arithmetic (deltas)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockstat.collect import kernel
from sockstat.collect.kernel import KernelChange, KernelSample, Sysctls
from sockstat.errors import ParseError, SourceUnavailable

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- /proc/net/netstat and /proc/net/snmp -------------------------------------------

def test_netstat_capture_parses_every_section():
    counters = kernel.parse_counters(fixture("kernel_netstat.txt"))
    assert counters["TcpExt.ListenOverflows"] == 0
    assert counters["TcpExt.TW"] == 8
    assert counters["TcpExt.TCPTimeWaitOverflow"] == 0
    assert counters["IpExt.InOctets"] == 25579323
    assert any(k.startswith("MPTcpExt.") for k in counters)


def test_snmp_capture_keeps_negative_maxconn():
    counters = kernel.parse_counters(fixture("kernel_snmp.txt"), "/proc/net/snmp")
    assert counters["Tcp.MaxConn"] == -1  # "no limit", a signed value
    assert counters["Tcp.ActiveOpens"] == 14
    assert counters["Udp.InDatagrams"] == 25


def test_counters_doctest_shape():
    text = "TcpExt: ListenOverflows ListenDrops\nTcpExt: 3 4\n"
    assert kernel.parse_counters(text) == {"TcpExt.ListenOverflows": 3,
                                           "TcpExt.ListenDrops": 4}


@pytest.mark.parametrize(("name", "message"), [
    ("kernel_netstat_truncated.txt", "names but"),
    ("kernel_netstat_orphan_header.txt", "expected the values of TcpExt"),
    ("kernel_netstat_nonnumeric.txt", "not a number"),
])
def test_malformed_counters_name_file_and_line(name, message):
    with pytest.raises(ParseError) as err:
        kernel.parse_counters(fixture(name), f"/fixtures/{name}")
    text = str(err.value)
    assert f"/fixtures/{name}:2:" in text
    assert message in text


def test_header_without_values_at_end_of_file():
    with pytest.raises(ParseError, match=r"netstat:1: TcpExt header has no value line"):
        kernel.parse_counters("TcpExt: A B\n", "netstat")


def test_garbage_header():
    with pytest.raises(ParseError, match=r"x:1: expected 'Section: names"):
        kernel.parse_counters("no colon here\n1 2\n", "x")


# -- /proc/net/sockstat ---------------------------------------------------------------

def test_sockstat_capture():
    values = kernel.parse_sockstat(fixture("kernel_sockstat.txt"))
    assert values["TCP.tw"] == 0
    assert values["TCP.orphan"] == 0
    assert values["sockets.used"] == 11
    assert kernel.parse_sockstat(fixture("kernel_sockstat6.txt"))["TCP6.inuse"] == 0


def test_sockstat_malformed():
    with pytest.raises(ParseError, match=r"bad:2: TCP.orphan is 'zero'"):
        kernel.parse_sockstat(fixture("kernel_sockstat_bad.txt"), "bad")
    with pytest.raises(ParseError, match=r"s:1: expected 'NAME: key value"):
        kernel.parse_sockstat("TCP: inuse\n", "s")


# -- sysctls and limits ----------------------------------------------------------------

def test_port_range_and_reserved_ports():
    assert kernel.parse_port_range("32768\t60999\n") == (32768, 60999)
    assert kernel.parse_port_list("\n") == frozenset()
    assert kernel.parse_port_list("8000-8002,9000\n") == {8000, 8001, 8002, 9000}
    for bad in ("60999 32768", "1", "a b", "0 70000"):
        with pytest.raises(ParseError, match="ip_local_port_range:1:"):
            kernel.parse_port_range(bad)
    for bad in ("80-70", "x", "1-2-3"):
        with pytest.raises(ParseError, match="ip_local_reserved_ports:1:"):
            kernel.parse_port_list(bad)


def test_usable_ports_subtracts_reserved_ports_inside_the_range():
    sysctls = Sysctls(port_range=(32768, 60999),
                      reserved_ports=frozenset({100, 40000, 40001}))
    assert sysctls.usable_ports == 60999 - 32768 + 1 - 2
    assert sysctls.is_ephemeral(32768) and sysctls.is_ephemeral(60999)
    assert not sysctls.is_ephemeral(40000) and not sysctls.is_ephemeral(8080)
    assert Sysctls().usable_ports is None and not Sysctls().is_ephemeral(40000)
    assert sysctls.to_dict()["ip_local_reserved_ports"] == "100,40000-40001"


def test_int_sysctl():
    assert kernel.parse_int("4096\n", "somaxconn") == 4096
    with pytest.raises(ParseError, match="somaxconn:1: expected a number"):
        kernel.parse_int("lots", "somaxconn")


def test_limits_capture():
    assert kernel.parse_nofile(fixture("kernel_limits.txt")) == (20000, 20000)
    unlimited = "Max open files            unlimited            unlimited            files\n"
    assert kernel.parse_nofile(unlimited) == (None, None)
    with pytest.raises(ParseError, match="no 'Max open files' line"):
        kernel.parse_nofile(fixture("kernel_limits_no_nofile.txt"))
    with pytest.raises(ParseError, match="l:1: limits are not numbers"):
        kernel.parse_nofile("Max open files  many  more  files\n", "l")


# -- readers on a fixture procfs tree -----------------------------------------------------

def _procfs(root: Path, **sysctl_text: str) -> Path:
    (root / "net").mkdir(parents=True)
    (root / "net" / "netstat").write_text(fixture("kernel_netstat.txt"))
    (root / "net" / "snmp").write_text(fixture("kernel_snmp.txt"))
    (root / "net" / "sockstat").write_text(fixture("kernel_sockstat.txt"))
    (root / "net" / "sockstat6").write_text(fixture("kernel_sockstat6.txt"))
    for name, text in sysctl_text.items():
        path = root / kernel.SYSCTLS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = root / "4242"
    (proc / "fd").mkdir(parents=True)
    for fd in range(5):
        (proc / "fd" / str(fd)).write_text("")
    (proc / "limits").write_text(fixture("kernel_limits.txt"))
    return root


def test_read_sample_from_fixture_tree(tmp_path):
    root = _procfs(tmp_path / "proc", ip_local_port_range="10000 10999\n",
                   ip_local_reserved_ports="10000-10009\n", somaxconn="128\n",
                   tcp_tw_reuse="1\n")
    sample = kernel.read_sample(str(root), pids=[4242, 999999])
    assert sample.counter("TcpExt.TW") == 8
    assert sample.counter("Tcp.MaxConn") == -1
    assert sample.sockstat["TCP.tw"] == 0 and "TCP6.inuse" in sample.sockstat
    assert sample.sysctls.port_range == (10000, 10999)
    assert sample.sysctls.usable_ports == 990
    assert sample.sysctls.somaxconn == 128
    assert sample.sysctls.tcp_max_tw_buckets is None  # absent file: unknown, not an error
    assert sample.limits == {4242: kernel.ProcessLimits(4242, 20000, 20000, 5)}


def test_read_sample_bad_sysctl_names_the_file(tmp_path):
    root = _procfs(tmp_path / "proc", somaxconn="big\n")
    with pytest.raises(ParseError, match=r"sys/net/core/somaxconn:1: expected a number"):
        kernel.read_sample(str(root))


def test_no_counters_is_source_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable):
        kernel.read_counters(str(tmp_path))


def test_live_sample_of_this_process():
    sample = kernel.read_sample(pids=[os.getpid()])
    mine = sample.limits[os.getpid()]
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert mine.nofile_soft == (None if soft == resource.RLIM_INFINITY else soft)
    assert mine.open_fds and mine.open_fds >= 3
    assert "TcpExt.ListenOverflows" in sample.counters
    assert sample.sysctls.port_range is not None


def test_open_fds_of_another_process_as_its_fd_directory_lists_them(tmp_path):
    """The fd count comes from one stat() of /proc/<pid>/fd where the kernel gives it
    (Linux 6.2+), else from listing the directory: either way what a listing shows."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import os, sys\n"
                              "fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(40)]\n"
                              "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
                              "sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        listed = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert kernel.count_open_fds(child.pid) == listed >= 43
        assert kernel.read_process_limits(child.pid).open_fds == listed
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    # another procfs root (a test tree) is always listed: its directories' sizes are not
    # counts
    (tmp_path / "7" / "fd").mkdir(parents=True)
    for fd in ("0", "1", "2"):
        (tmp_path / "7" / "fd" / fd).touch()
    assert kernel.count_open_fds(7, str(tmp_path)) == 3
    assert kernel.count_open_fds(8, str(tmp_path)) is None


# -- deltas ----------------------------------------------------------------------------

def test_change_deltas():
    before = KernelSample(taken_at=10.0, counters={"TcpExt.ListenOverflows": 5, "A.b": 9})
    after = KernelSample(taken_at=12.5, counters={"TcpExt.ListenOverflows": 12, "A.b": 3},
                         sockstat={"TCP.tw": 7})
    change = KernelChange(after=after, before=before)
    assert change.seconds == 2.5
    assert change.delta("TcpExt.ListenOverflows") == 7
    assert change.delta("A.b") == 0  # a counter that went backwards is no negative rate
    assert change.delta("Nope.x") is None
    assert change.value("TCP.tw") == 7 and change.value("A.b") == 3
    single = KernelChange(after=after)
    assert single.seconds is None and single.delta("TcpExt.ListenOverflows") is None


def test_a_table_the_counters_say_is_empty_need_not_be_dumped():
    from sockstat.model import Family, Proto, TcpState

    counts = kernel.parse_sockstat(
        "sockets: used 9\nTCP: inuse 3 orphan 0 tw 0 alloc 5 mem 1\nUDP: inuse 0 mem 0\n")
    counts.update(kernel.parse_sockstat("TCP6: inuse 0\nUDP6: inuse 2\n"))
    tw, listen = {TcpState.TIME_WAIT}, {TcpState.LISTEN}
    assert not kernel.may_hold(counts, Proto.TCP, Family.INET, tw)  # no TIME_WAIT counted
    assert kernel.may_hold(counts, Proto.TCP, Family.INET, listen)
    assert not kernel.may_hold(counts, Proto.TCP, Family.INET6, listen)
    assert not kernel.may_hold(counts, Proto.UDP, Family.INET)
    assert kernel.may_hold(counts, Proto.UDP, Family.INET6)
    counts["TCP.tw"] = 4  # both families' TIME_WAITs together
    assert kernel.may_hold(counts, Proto.TCP, Family.INET6, tw)
    assert kernel.may_hold({}, Proto.TCP, Family.INET, tw)  # nothing known: dump


def test_only_a_time_wait_query_reads_the_counters_first():
    from sockstat.collect import _counted
    from sockstat.model import Family, Proto, TcpState
    from sockstat.query import Query

    assert _counted(Query.build(ports=[22]), "/proc") is None
    assert _counted(Query.build(states=["time-wait", "listen"]), "/proc") is None
    may_have = _counted(Query.build(states=["time-wait"]), "/proc")
    assert may_have(Proto.TCP, Family.INET, {TcpState.TIME_WAIT}) in (True, False)
    assert _counted(Query.build(states=["time-wait"]), "/nonexistent") is None
