"""The cluster CA, TLS directories and identities, without sockets."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from swarmpull.core.fields import PEER_ID_RE
from swarmpull.core.identity import (
    SUPERNODE_TLS_NAME,
    Identity,
    IdentityError,
    Role,
    check_host,
    check_name,
    identity_from_peercert,
    tls_name,
)
from swarmpull.edges.tls import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    CertificateAuthority,
    TlsError,
    load_tls_dir,
    write_tls_dir,
)
from swarmpull.edges.tls.files import identity_of_certificate

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]+$")
# Peer ids short enough for a certificate (PEER_ID_RE, at most 64 characters).
names = st.from_regex(PEER_ID_RE.pattern.replace("{0,127}", "{0,63}"), fullmatch=True)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.generate(now=NOW)


def issue_dir(path, ca, name="peer-1", role=Role.NODE, trusted=None, **kwargs):
    issued = ca.issue(name, role, now=kwargs.pop("now", NOW), **kwargs)
    write_tls_dir(path, issued, trusted or [ca.certificate])
    return path


# ----------------------------------------------------------------- names


def test_tls_names_plain_and_encoded():
    assert tls_name("peer-1", Role.NODE) == "peer-1.node.swarmpull.invalid"
    assert tls_name("sn1", Role.SUPERNODE) == "sn1.supernode.swarmpull.invalid"
    encoded = tls_name("Node_1:7400", Role.NODE)
    assert encoded.endswith(".x.node.swarmpull.invalid")
    # DNS names compare without case: names that differ only in case stay apart.
    assert tls_name("Node1", Role.NODE).lower() != tls_name("node1", Role.NODE).lower()


@given(names)
def test_a_tls_name_is_a_dns_name(name):
    for role in Role:
        assert DNS_NAME_RE.match(tls_name(name, role))


@given(names, names)
def test_tls_names_are_one_to_one(a, b):
    if a != b:
        assert tls_name(a, Role.NODE).lower() != tls_name(b, Role.NODE).lower()
    assert tls_name(a, Role.NODE) != tls_name(a, Role.SUPERNODE)
    assert tls_name(a, Role.SUPERNODE) != SUPERNODE_TLS_NAME


@pytest.mark.parametrize("name", ["", " a", "a b", "x\n", "-a", "a" * 65, "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(IdentityError):
        check_name(name)


def test_the_longest_name_makes_a_certificate(ca):
    name = "Z" + "a_b:C.d-" * 7 + "Q" * 7  # 64 characters, base32-encoded in its TLS name
    assert len(name) == 64
    assert identity_of_certificate(ca.issue(name, now=NOW).certificate).name == name


def test_hosts():
    assert check_host("127.0.0.1") == "127.0.0.1"
    assert check_host("::1") == "::1"
    assert check_host("Node7.Example.com.") == "node7.example.com"
    for bad in ("", "a b", "-x.com", "x..com", "peer-1.node.swarmpull.invalid", "swarmpull.invalid"):
        with pytest.raises(IdentityError):
            check_host(bad)


# ---------------------------------------------------------------- issuing


def test_an_issued_certificate_names_its_identity(ca):
    issued = ca.issue("sn1", Role.SUPERNODE, now=NOW, hosts=["10.0.0.7", "sn1.example.com"])
    assert identity_of_certificate(issued.certificate) == Identity("sn1", Role.SUPERNODE)
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "sn1.supernode.swarmpull.invalid",
        SUPERNODE_TLS_NAME,
        "sn1.example.com",
    }
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    node = ca.issue("peer-1", Role.NODE, now=NOW)
    node_san = node.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SUPERNODE_TLS_NAME not in node_san.get_values_for_type(x509.DNSName)
    assert node.certificate.not_valid_after_utc == NOW + timedelta(days=365)


def test_a_certificate_may_not_outlive_its_ca(ca):
    with pytest.raises(TlsError, match="outlive the CA"):
        ca.issue("peer-1", now=NOW, days=4000)
    short = CertificateAuthority.generate(now=NOW, days=100)
    by_default = short.issue("peer-1", now=NOW)  # a year, or as long as the CA lives
    assert by_default.certificate.not_valid_after_utc == short.certificate.not_valid_after_utc


def test_the_ca_round_trips_and_keeps_its_key_private(tmp_path, ca):
    ca.save(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.certificate == ca.certificate
    with pytest.raises(TlsError, match="already exist"):
        ca.save(tmp_path / "ca")
    CertificateAuthority.generate(now=NOW).save(tmp_path / "ca", force=True)
    assert CertificateAuthority.load(tmp_path / "ca").certificate != ca.certificate


def test_a_tls_dir_round_trips(tmp_path, ca):
    d = issue_dir(tmp_path / "n", ca)
    assert stat.S_IMODE((d / KEY_FILE).stat().st_mode) == 0o600
    files = load_tls_dir(d, now=NOW, role=Role.NODE)
    assert files.identity == Identity("peer-1", Role.NODE)
    assert files.issuer == ca.certificate
    with pytest.raises(TlsError, match="already exist"):
        issue_dir(d, ca)
    assert not list(d.glob(".*"))  # no temporary files left behind


def test_a_certificate_from_another_ca_is_refused(tmp_path, ca, other_ca):
    d = issue_dir(tmp_path / "n", other_ca, trusted=[ca.certificate])
    with pytest.raises(TlsError, match="not issued by a CA in"):
        load_tls_dir(d, now=NOW)


def test_an_expired_certificate_is_refused(tmp_path, ca):
    d = issue_dir(tmp_path / "n", ca, now=NOW - timedelta(days=40), days=30)
    with pytest.raises(TlsError, match="expired"):
        load_tls_dir(d, now=NOW)
    with pytest.raises(TlsError, match="not valid before"):
        load_tls_dir(issue_dir(tmp_path / "m", ca, now=NOW + timedelta(days=1)), now=NOW)


def test_the_wrong_role_is_refused(tmp_path, ca):
    node = issue_dir(tmp_path / "node", ca)
    with pytest.raises(TlsError, match="is a node certificate; a supernode needs"):
        load_tls_dir(node, now=NOW, role=Role.SUPERNODE)
    supernode = issue_dir(tmp_path / "sn", ca, "sn1", Role.SUPERNODE)
    with pytest.raises(TlsError, match="is a supernode certificate"):
        load_tls_dir(supernode, now=NOW, role=Role.NODE)


def test_a_node_cannot_mint_a_supernode_certificate(tmp_path, ca):
    """A node's key signs nothing the cluster accepts: its certificate is not a CA's."""
    node = ca.issue("peer-1", now=NOW)
    as_ca = CertificateAuthority(node.certificate, node.key)
    forged = as_ca.issue("evil", Role.SUPERNODE, now=NOW, days=30)
    d = tmp_path / "forged"
    write_tls_dir(d, forged, [ca.certificate])
    with pytest.raises(TlsError, match="not issued by a CA"):
        load_tls_dir(d, now=NOW)
    write_tls_dir(d, forged, [ca.certificate, node.certificate], force=True)
    with pytest.raises(TlsError, match="is not a CA certificate"):
        load_tls_dir(d, now=NOW)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, ca):
    d = issue_dir(tmp_path / "a", ca)
    other = issue_dir(tmp_path / "b", ca, "peer-2")
    (d / KEY_FILE).write_bytes((other / KEY_FILE).read_bytes())
    with pytest.raises(TlsError, match="is not the key of"):
        load_tls_dir(d, now=NOW)


def test_missing_and_broken_files_name_the_file(tmp_path, ca):
    d = issue_dir(tmp_path / "n", ca)
    (d / CERT_FILE).write_text("not a certificate")
    with pytest.raises(TlsError, match=r"cert\.pem: not a PEM certificate"):
        load_tls_dir(d, now=NOW)
    (d / CA_FILE).unlink()
    with pytest.raises(TlsError, match=r"ca\.pem: no such file"):
        load_tls_dir(d, now=NOW)


def test_rotation_trusts_both_cas(tmp_path, ca, other_ca):
    """ca.pem holds the old and the new CA: certificates of either load."""
    old = issue_dir(tmp_path / "old", ca, "peer-1", trusted=[ca.certificate, other_ca.certificate])
    new = issue_dir(tmp_path / "new", other_ca, "peer-2", trusted=[other_ca.certificate, ca.certificate])
    assert load_tls_dir(old, now=NOW).issuer == ca.certificate
    assert load_tls_dir(new, now=NOW).issuer == other_ca.certificate
    assert len(load_tls_dir(new, now=NOW).trusted) == 2


# ------------------------------------------------------------- peercert


def peercert(cn=("peer-1",), ou=("node",), dns=("peer-1.node.swarmpull.invalid",)):
    subject = [(("organizationName", "swarmpull"),)]
    subject += [(("organizationalUnitName", v),) for v in ou]
    subject += [(("commonName", v),) for v in cn]
    return {"subject": tuple(subject), "subjectAltName": tuple(("DNS", d) for d in dns)}


def test_identity_from_a_peer_certificate():
    assert identity_from_peercert(peercert()) == Identity("peer-1", Role.NODE)
    sn = peercert(cn=["sn1"], ou=["supernode"], dns=["sn1.supernode.swarmpull.invalid", SUPERNODE_TLS_NAME])
    assert identity_from_peercert(sn).is_supernode


@pytest.mark.parametrize(
    ("cert", "message"),
    [
        (None, "no certificate"),
        (peercert(cn=[]), "one node"),
        (peercert(cn=["a", "b"]), "one node"),
        (peercert(ou=[]), "one role"),
        (peercert(ou=["admin"]), "role must be"),
        (peercert(cn=["bad name"]), "invalid name"),
        # A certificate whose subject says supernode but which was made for a node.
        (peercert(ou=["supernode"]), "lacks its TLS name"),
        (peercert(dns=[]), "lacks its TLS name"),
    ],
)
def test_a_peer_certificate_without_a_valid_identity_is_refused(cert, message):
    with pytest.raises(IdentityError, match=message):
        identity_from_peercert(cert)


def test_ed25519_keys_work_the_same_way(tmp_path):
    from swarmpull.edges.tls.authority import KeyType

    ca = CertificateAuthority.generate(now=NOW, key_type=KeyType.ED25519)
    ca.save(tmp_path / "ca")
    loaded = CertificateAuthority.load(tmp_path / "ca")
    d = issue_dir(tmp_path / "n", loaded, "sn1", Role.SUPERNODE)
    assert load_tls_dir(d, now=NOW, role=Role.SUPERNODE).identity == Identity("sn1", Role.SUPERNODE)
