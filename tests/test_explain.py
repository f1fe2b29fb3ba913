"""sockstat.explain: the texts shared by `sockstat explain`, the demo lab and
`sockstat check`. Every state and required topic is there, every spelling finds it,
cross-references lead somewhere, and the myths the lab exists to correct are corrected."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_sockstat

from sockstat import explain
from sockstat.demo import resolve
from sockstat.errors import UsageError
from sockstat.model import TcpState

SHOWN = [s for s in TcpState if s not in (TcpState.NEW_SYN_RECV, TcpState.BOUND_INACTIVE,
                                          TcpState.CLOSE)]


@pytest.mark.parametrize("state", SHOWN, ids=lambda s: s.name)
def test_every_state_has_a_full_explanation(state):
    e = explain.text(state)
    assert e.state is state and e.is_state
    assert e.title.startswith(state.name + ":")
    for field in ("side", "meaning", "how_you_get_there", "how_long", "when_many", "remedy"):
        assert getattr(e, field), f"{state.name} has no {field}"
    assert explain.state_text(state) == e.meaning
    assert explain.remedy(state) == e.remedy
    assert e.demo and resolve(e.demo).state in (state, None)


def test_closed_and_request_sockets():
    assert explain.text(TcpState.CLOSE).topic == "closed"
    assert explain.text("CLOSED").is_state
    assert explain.text(TcpState.NEW_SYN_RECV).state is TcpState.SYN_RECV


@pytest.mark.parametrize("topic", ["reuseaddr", "reuseport", "2msl", "backlog", "window",
                                   "close-vs-shutdown", "half-close", "handshake",
                                   "teardown"])
def test_topics(topic):
    e = explain.text(topic)
    assert e.topic == topic and e.meaning and not e.is_state
    assert e.demo is None or resolve(e.demo)


@pytest.mark.parametrize("typed, topic", [
    ("TIME_WAIT", "time-wait"), ("Time-Wait", "time-wait"), ("fin_wait_2", "fin-wait2"),
    ("SYN_RCVD", "syn-recv"), ("SO_REUSEADDR", "reuseaddr"), ("so_reuseport", "reuseport"),
    ("tcp_fin_timeout", "2msl"), ("MSL", "2msl"), ("somaxconn", "backlog"),
    ("zero-window", "window"), ("shutdown", "close-vs-shutdown"),
])
def test_any_spelling(typed, topic):
    assert explain.resolve(typed) == topic


def test_unknown_topic_is_a_usage_error_naming_the_topics():
    with pytest.raises(UsageError, match="nothing to explain about 'nope'.*reuseaddr.*2msl"):
        explain.text("nope")


def test_cross_references_resolve():
    for e in explain.TOPICS.values():
        for other in e.see_also:
            assert explain.resolve(other) == other, (e.topic, other)


def _all_text(topic: str) -> str:
    e = explain.text(topic)
    return " ".join([e.meaning, e.how_long, e.when_many, e.remedy, *e.myths])


def test_time_wait_myths_are_corrected():
    text = _all_text("time-wait")
    assert "60 s" in text
    assert "tcp_fin_timeout is not the length of TIME_WAIT" in text
    assert "removed in Linux 4.12" in text
    assert "only applies to outgoing connections" in text
    assert "the old server must have set it as well" in text
    twomsl = _all_text("2msl")
    assert "tcp_fin_timeout does not set the TIME_WAIT length" in twomsl
    assert "FIN_WAIT2" in _all_text("fin-wait2") and "tcp_fin_timeout" in _all_text("fin-wait2")


def test_the_notes_wrong_claims_about_port_reuse_are_corrected():
    reuseport = _all_text("reuseport")
    assert "only one can establish connections" in reuseport  # the claim, quoted
    assert "spreads connections over all of them" in reuseport  # and the fact
    assert "same effective uid" in reuseport
    reuseaddr = _all_text("reuseaddr")
    assert "old server must have set it" in reuseaddr


def test_explain_is_light_to_import():
    code = ("import sys, sockstat.explain; "
            "print(sorted(m for m in ('rich', 'psutil', 'typer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- the command ---------------------------------------------------------------------

def sockstat(*args: str) -> subprocess.CompletedProcess:
    return run_sockstat(*args)


def test_explain_command():
    result = sockstat("explain", "TIME_WAIT")
    assert result.returncode == 0 and result.stderr == ""
    for label in ("Which side", "What it means", "How you get there", "How long",
                  "Many of them", "What to do", "Myth"):
        assert label in result.stdout
    assert "60 s" in result.stdout and "\x1b[" not in result.stdout


def test_explain_json_and_list():
    one = json.loads(sockstat("explain", "reuseaddr", "--json").stdout)
    assert one["topic"] == "reuseaddr" and one["kind"] == "topic" and one["myths"]
    listed = json.loads(sockstat("explain", "--list", "--json").stdout)
    assert [e["topic"] for e in listed["states"]][-1] == "closed"
    assert {"reuseaddr", "2msl", "backlog", "window"} <= {e["topic"] for e in listed["topics"]}
    text = sockstat("explain", "--list").stdout
    assert "States" in text and "Topics" in text and "2msl" in text


def test_explain_unknown_topic():
    result = sockstat("explain", "bogus")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("sockstat: error: nothing to explain about 'bogus'")


def test_user_facing_texts_stand_alone_without_citing_unseen_notes():
    # users never see the project's background notes: a text must not cite them
    import ast
    import re
    from pathlib import Path

    import sockstat

    package = Path(sockstat.__file__).parent
    for module in ("explain.py", "demo/scenarios.py"):
        tree = ast.parse((package / module).read_text())
        texts = [node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)]
        cited = [t for t in texts if re.search(r"\bthe notes\b", t, re.IGNORECASE)]
        assert not cited, (module, cited)


def test_the_drops_detector_texts_live_in_the_catalogue():
    from sockstat import explain
    from sockstat.diagnose import drops

    for name in ("UDP_EXPLANATION", "UDP_REMEDY", "TCP_EXPLANATION", "TCP_REMEDY",
                 "HOST_EXPLANATION", "HOST_REMEDY"):
        assert getattr(explain, f"DROPS_{name}")  # one home: the catalogue
        assert not hasattr(drops, name)
