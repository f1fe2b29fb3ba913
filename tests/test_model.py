"""The data model as other tools read it: its annotations resolve (typing.get_type_hints,
inspect.get_annotations), although the classes it names from modules of their own are
imported only when they are asked for."""

from __future__ import annotations

from conftest import python_says


def test_the_models_type_hints_resolve_and_import_the_lazy_classes_only_then():
    """typing.get_type_hints(Socket) gives the real classes (TcpInfo, UnixInfo,
    Container, NetNamespace), as for Snapshot (Service, DropBaseline); importing the
    model imports none of their modules, and its namespace is the same after."""
    code = """
import sys, typing
from sockstat import model
lazy = ("sockstat.tcpinfo", "sockstat.unixinfo", "sockstat.placement",
        "sockstat.kernelmodel")
assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]
hints = typing.get_type_hints(model.Socket)
from sockstat import kernelmodel, placement, tcpinfo, unixinfo
assert hints["tcp_info"] == tcpinfo.TcpInfo | None, hints["tcp_info"]
assert hints["unix"] == unixinfo.UnixInfo | None
assert hints["container"] == placement.Container | None
assert hints["netns"] == placement.NetNamespace | None
assert hints["local"] is model.Endpoint and hints["state"] is model.TcpState
snapshot = typing.get_type_hints(model.Snapshot)
assert snapshot["services"] == dict[int, placement.Service]
assert snapshot["drops_before"] == kernelmodel.DropBaseline | None
assert model.TcpInfo is tcpinfo.TcpInfo and vars(model)["Service"] is placement.Service
import inspect
assert inspect.get_annotations(model.Socket, eval_str=True) == {
    name: hints[name] for name in model.Socket.__annotations__}
print("ok")
"""
    assert python_says(code) == "ok"
