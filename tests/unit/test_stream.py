"""How the node reads a file from the master's fileserver: Salt's chunked ``_serve_file`` requests,
from the loader's file client or its own."""

import threading

import pytest
import salt.fileclient
from saltext_deploy._modules import deploy

DATA = bytes(range(256)) * 40  # 10240 bytes


class FakeClient:
    """Salt's file client as the node module uses it: ``_channel_send`` answers ``_serve_file``
    with ``step`` bytes from ``loc`` (raw: bytes keys), or nothing for another path."""

    def __init__(self, data=DATA, step=1000, path="files/a.tar", on_send=None):
        self.data, self.step, self.path, self.on_send = data, step, path, on_send
        self.locs, self.threads, self.destroyed = [], set(), False

    def _channel_send(self, load, raw=False):
        assert raw and load["cmd"] == "_serve_file" and load["saltenv"] == "base"
        self.locs.append(load["loc"])
        self.threads.add(threading.current_thread().name)
        if self.on_send:
            self.on_send(load)
        if load["path"] != self.path:
            return {b"data": b"", b"dest": b""}
        return {b"data": self.data[load["loc"]:load["loc"] + self.step], b"dest": b"a.tar"}

    def destroy(self):
        self.destroyed = True


class Packed:
    def __init__(self, value):
        self._value = value

    def value(self):
        return self._value


@pytest.fixture
def own_client(monkeypatch):
    """The file client the module makes for itself (``salt.fileclient.get_file_client``)."""
    made = []

    def get_file_client(opts, pillar=False):
        made.append(FakeClient())
        return made[-1]

    monkeypatch.setattr(salt.fileclient, "get_file_client", get_file_client)
    monkeypatch.setattr(deploy, "__opts__", {}, raising=False)
    monkeypatch.setattr(deploy, "_fetch", lambda *a: pytest.fail("the file went through the minion's cache"))
    return made


@pytest.mark.parametrize("packed", [{}, None])
def test_a_job_without_a_packed_file_client_streams_through_its_own(monkeypatch, own_client, packed):
    # a minion's job gets {} as __file_client__: the transfer is Salt's chunked one all the same, never a
    # copy in the minion's cache read back
    if packed is None:
        monkeypatch.delattr(deploy, "__file_client__", raising=False)
    else:
        monkeypatch.setattr(deploy, "__file_client__", Packed(packed), raising=False)
    with deploy._open_source("salt://files/a.tar", "base") as fh:
        assert fh.read() == DATA
    assert len(own_client) == 1 and own_client[0].destroyed
    assert own_client[0].locs == list(range(0, len(DATA) + 1, 1000)) + [len(DATA)]


def test_a_packed_file_client_is_used_and_kept(monkeypatch, own_client):
    client = FakeClient()
    monkeypatch.setattr(deploy, "__file_client__", Packed(client), raising=False)
    with deploy._open_source("salt://files/a.tar", "base") as fh:
        assert fh.read() == DATA
    assert not own_client and not client.destroyed
