"""The etcd store over TLS (CA, client certificate) with etcd's user/password authentication on: a real
etcd on loopback with ``--client-cert-auth`` and auth enabled, a throw-away CA made with openssl."""

import base64
import logging
import os
import subprocess

import pytest
import requests

from deploy_master import store
from deploy_master.store_etcd import StoreUnavailable
from sandbox.etcd import ETCD, EtcdServer

assert os.path.exists(ETCD), "needs the Debian package etcd-server"

PASSWORD = "Pw-8d1c5e07-etcd-secret"  # searched for in every error and log line
ROOT_PASSWORD = "Root-2f6a91c4-secret"
PREFIX = "/salt-deploy-auth/"
INV = {"current": "r2", "previous": "r1", "releases": [], "fingerprint": "0123456789abcdef"}


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _cert(folder, name, ca, usage):
    ext = os.path.join(folder, f"{name}.ext")
    with open(ext, "w", encoding="utf-8") as fh:
        fh.write(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/O={name}", cwd=folder)  # no CN: see README, etcd's gateway
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", ext, cwd=folder)
    return os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}.key")


def _ca(folder, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=folder)
    return os.path.join(folder, f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pki"))
    out = {"ca": _ca(folder, "ca"), "other_ca": _ca(folder, "other-ca")}
    # etcd's JSON gateway talks to its own gRPC server with this certificate: it needs clientAuth too
    out["cert"], out["key"] = _cert(folder, "etcd", "ca", "serverAuth,clientAuth")
    out["client_cert"], out["client_key"] = _cert(folder, "master", "ca", "clientAuth")
    out["stranger_cert"], out["stranger_key"] = _cert(folder, "stranger", "other-ca", "clientAuth")
    return out


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory, pki):
    server = EtcdServer(tmp_path_factory.mktemp("etcd"), tls=pki).start()
    session = requests.Session()
    session.trust_env = False  # the CA below, not REQUESTS_CA_BUNDLE
    session.verify, session.cert = pki["ca"], (pki["client_cert"], pki["client_key"])

    def post(path, body, token=None):
        res = session.post(f"{server.endpoint}/v3/{path}", json=body, timeout=5,
                           headers={"Authorization": token} if token else {})
        assert res.status_code == 200, res.text
        return res.json()

    # a root user (needed to turn auth on) and a deploy user that may use PREFIX only
    post("auth/user/add", {"name": "root", "password": ROOT_PASSWORD})
    post("auth/role/add", {"name": "root"})
    post("auth/user/grant", {"user": "root", "role": "root"})
    post("auth/user/add", {"name": "deploy", "password": PASSWORD})
    post("auth/role/add", {"name": "deploy"})
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    post("auth/role/grant", {"name": "deploy", "perm": {"key": _b64(PREFIX), "range_end": _b64(end),
                                                        "permType": "READWRITE"}})
    post("auth/user/grant", {"user": "deploy", "role": "deploy"})
    post("auth/enable", {})
    yield server
    server.stop()


@pytest.fixture
def conf(etcd, pki):
    return {"endpoints": [etcd.endpoint], "prefix": PREFIX, "ttl": 2, "timeout": 2, "ca_cert": pki["ca"],
            "cert_cert": pki["client_cert"], "cert_key": pki["client_key"], "user": "deploy", "password": PASSWORD}


def _store(conf):
    return store.get({"deploy_store": "etcd", "id": "m1", "cachedir": "/nonexistent", "deploy_etcd": conf})


def _no_secret(text):
    assert PASSWORD not in text and ROOT_PASSWORD not in text


def test_tls_and_the_right_password_work(conf):
    s = _store(conf)
    lock = s.lock("rainbow", "pro", "release")
    lock.acquire("20260101000000000001")
    try:
        s.record_update("rainbow", "pro", {"web-1": INV}, lock=lock)
        s.history_append("rainbow", {"kind": "release", "env": "pro", "result": "success", "release": "r2"},
                         lock=lock)
    finally:
        lock.release()
    assert s.record_read("rainbow", "pro") == {"web-1": INV}
    assert [r["release"] for r in s.history_read("rainbow", "pro")] == ["r2"]
    assert s.lock("rainbow", "pro", "view").holder() is None


def _refusal(conf, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as err:
        _store(conf).record_read("rainbow", "pro")
    message = str(err.value)
    _no_secret(message)
    _no_secret(caplog.text)
    _no_secret(repr(err.value.__cause__) + repr(err.value.__context__))
    return message


def test_a_wrong_password_is_refused_with_a_clear_error_without_the_password(conf, caplog):
    message = _refusal({**conf, "password": "Wrong-" + PASSWORD}, caplog)
    assert "refused a request" in message and "authentication failed, invalid user ID or password" in message


def test_no_password_is_refused(conf, caplog):
    message = _refusal({k: v for k, v in conf.items() if k not in ("user", "password")}, caplog)
    assert "user name is empty" in message or "permission denied" in message, message


def test_the_deploy_user_cannot_leave_its_prefix(conf, caplog):
    message = _refusal({**conf, "prefix": "/elsewhere/"}, caplog)
    assert "permission denied" in message


def test_a_server_certificate_from_another_ca_is_refused(conf, pki, caplog):
    message = _refusal({**conf, "ca_cert": pki["other_ca"]}, caplog)
    assert "TLS" in message and "certificate verify failed" in message


def test_a_client_certificate_the_server_does_not_trust_is_refused(conf, pki, caplog):
    message = _refusal({**conf, "cert_cert": pki["stranger_cert"], "cert_key": pki["stranger_key"]}, caplog)
    assert "TLS" in message, message


def test_a_client_certificate_without_its_key_is_a_configuration_error(conf):
    with pytest.raises(StoreUnavailable, match=r"deploy_etcd: cert_cert and cert_key go together"):
        _store({**conf, "cert_key": None})


def test_credentials_in_an_endpoint_url_are_refused_without_echoing_them(conf, etcd):
    url = etcd.endpoint.replace("https://", f"https://deploy:{PASSWORD}@")
    with pytest.raises(StoreUnavailable) as err:
        _store({**conf, "endpoints": [url]})
    assert "user and password go in deploy_etcd user/password, not in an endpoint URL" in str(err.value)
    _no_secret(str(err.value))
