"""pki: CA, serving certificates and renewal decisions."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from modeldeploy import pki

pytestmark = pytest.mark.unit
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca(NOW)


def test_issue_signed_by_ca_with_sans(ca: pki.KeyPair) -> None:
    leaf = pki.issue(ca, ["m", "m.ns.svc", "10.0.0.1"], NOW)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    assert sorted(pki.sans(leaf.cert_pem)) == ["10.0.0.1", "m", "m.ns.svc"]
    assert pki.not_after(leaf.cert_pem) == NOW + pki.LEAF_VALIDITY
    assert "PRIVATE KEY" in leaf.key_pem


def test_renewal(ca: pki.KeyPair) -> None:
    names = ["m", "m.ns"]
    leaf = pki.issue(ca, names, NOW)
    assert not pki.needs_renewal(leaf.cert_pem, names, NOW, ca.cert_pem)
    assert pki.needs_renewal(leaf.cert_pem, names + ["chat.lan"], NOW, ca.cert_pem)
    assert pki.needs_renewal(leaf.cert_pem, names, NOW + dt.timedelta(days=61), ca.cert_pem)
    assert pki.needs_renewal(None, names, NOW)
    assert pki.needs_renewal("garbage", names, NOW)
    other = pki.create_ca(NOW, "other CA")
    assert pki.needs_renewal(leaf.cert_pem, names, NOW, other.cert_pem)
