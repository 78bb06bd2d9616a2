"""``ppml deploy init`` / ``csr`` / ``sign``: one bundle per host, nothing of any other host."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ppml.client.cli import main
from ppml.client.deploy.provision import (
    Plan,
    ProvisionError,
    parse_dealer,
    parse_party,
    provision,
)
from ppml.proto.deploy.tls import TlsFiles, make_csr, sign_csr
from ppml.proto.deploy.tokens import load_auth_file, token_hash
from ppml.proto.deploy.topology import load_config

PARTIES = [
    "s0=10.77.0.10:50051:29500:9100",
    "s1=server-1.example.org:50052:29501",
    "s2=10.77.0.12:50051:29500",
]
DEALER = "dealer=10.77.0.20:29600"
SERVERS = {
    "s0": "10.77.0.10",
    "s1": "server-1.example.org",
    "s2": "10.77.0.12",
    "dealer": "10.77.0.20",
}


def _plan(**kw: object) -> Plan:
    return Plan(
        parties=tuple(parse_party(p) for p in PARTIES),
        dealer=parse_dealer(DEALER),
        clients=("alice", "bob"),
        monitors=("ops",),
        **kw,  # type: ignore[arg-type]
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _scalar(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_numbers().private_value.to_bytes(32, "big")


def _verify(cert: x509.Certificate, ca: x509.Certificate) -> None:
    cert.verify_directly_issued_by(ca)


def _sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName)
    )


@pytest.fixture
def bundles(tmp_path: Path):  # type: ignore[no-untyped-def]
    return provision(tmp_path / "out", _plan())


def test_layout_and_exact_contents(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([*SERVERS, "ca", "clients"])
    assert sorted(p.name for p in (out / "clients").iterdir()) == ["alice", "bob", "ops"]
    for rank, name in enumerate(["s0", "s1", "s2"]):
        rel = {str(p.relative_to(out / name)) for p in _files(out / name)}
        assert rel == {
            "BUNDLE.txt",
            "cluster.toml",
            "tls/ca.pem",
            f"tls/{name}.pem",
            f"tls/{name}.key",
            f"auth/{name}.toml",
            f"secrets/{name}.peer.token",
        }, name
        assert f"--rank {rank}" in (out / name / "BUNDLE.txt").read_text()
    rel = {str(p.relative_to(out / "dealer")) for p in _files(out / "dealer")}
    assert rel == {
        "BUNDLE.txt",
        "cluster.toml",
        "tls/ca.pem",
        "tls/dealer.pem",
        "tls/dealer.key",
        "secrets/dealer.peer.token",
    }
    for client in ["alice", "bob", "ops"]:
        rel = {
            str(p.relative_to(out / "clients" / client)) for p in _files(out / "clients" / client)
        }
        assert rel == {"BUNDLE.txt", "cluster.toml", "tls/ca.pem", f"secrets/{client}.token"}
    assert {p.name for p in _files(out / "ca")} == {"ca.pem", "ca.key"}


def test_no_bundle_holds_another_hosts_key_or_token(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    keys = {name: (out / name / "tls" / f"{name}.key").read_bytes() for name in SERVERS}
    keys["ca"] = (out / "ca" / "ca.key").read_bytes()
    tokens = {name: (out / name / "secrets" / f"{name}.peer.token").read_text() for name in SERVERS}
    for client in ["alice", "bob", "ops"]:
        tokens[client] = (out / "clients" / client / "secrets" / f"{client}.token").read_text()
    assert len(set(tokens.values())) == len(tokens) and all(len(t) >= 40 for t in tokens.values())
    # the key's secret part, not just the whole PEM: a copy re-wrapped or re-encoded still
    # counts (base64 chars 48.. of a PKCS#8 P-256 key follow the fixed header: the scalar)
    bodies = {n: b"".join(k.splitlines()[1:-1])[48:90] for n, k in keys.items()}
    scalars = {n: _scalar(k) for n, k in keys.items()}
    bundle_dirs = {
        **{n: out / n for n in SERVERS},
        **{c: out / "clients" / c for c in ["alice", "bob", "ops"]},
    }
    for owner, folder in bundle_dirs.items():
        for file in _files(folder):
            data = file.read_bytes()
            flat = b"".join(data.splitlines())
            for name, key in keys.items():
                if name != owner:
                    assert key not in data and bodies[name] not in flat, (file, name)
                    assert scalars[name] not in data, (file, name)
                    assert scalars[name].hex().encode() not in data.lower(), (file, name)
            for name, token in tokens.items():
                if name != owner:
                    assert token.encode() not in data, (file, name)
            if owner not in keys:  # clients hold no key at all
                assert b"PRIVATE KEY" not in data, file
        # its own secrets are there, and mode 0600
        if owner in keys:
            assert (folder / "tls" / f"{owner}.key").read_bytes() == keys[owner]
            assert stat.S_IMODE((folder / "tls" / f"{owner}.key").stat().st_mode) == 0o600
        secret = next((folder / "secrets").iterdir())
        assert secret.read_text() == tokens[owner]
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "ca" / "ca.key").stat().st_mode) == 0o600


def test_certificates_verify_against_the_ca_with_the_right_sans(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.pem").read_bytes())
    for name, host in SERVERS.items():
        assert (out / name / "tls" / "ca.pem").read_bytes() == (out / "ca" / "ca.pem").read_bytes()
        cert = x509.load_pem_x509_certificate((out / name / "tls" / f"{name}.pem").read_bytes())
        _verify(cert, ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert _sans(cert) == [host]
        if host[0].isdigit():
            ipaddress.ip_address(host)  # an IP SAN, not a DNS name
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
        # the certificate matches the key next to it
        key = serialization.load_pem_private_key(
            (out / name / "tls" / f"{name}.key").read_bytes(), None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_every_bundles_topology_loads_and_resolves_its_own_files(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    for rank, name in enumerate(["s0", "s1", "s2"]):
        config = load_config(out / name / "cluster.toml")
        assert [p.name for p in config.parties] == ["s0", "s1", "s2"]
        party = config.party(rank)
        for path in (
            party.tls_cert,
            party.tls_key,
            party.auth_file,
            party.peer_token_file,
            config.ca_cert,
        ):
            assert path is not None and path.is_file(), path
        assert party.data_dir.is_relative_to(out / name)
        assert config.client_token_file is None
        auth = load_auth_file(party.auth_file)  # type: ignore[arg-type]
        roles = {(i.name, i.role) for i in auth.values()}
        assert roles == {
            ("alice", "client"),
            ("bob", "client"),
            ("ops", "monitor"),
            ("s0", "peer"),
            ("s1", "peer"),
            ("s2", "peer"),
            ("dealer", "peer"),
        }
        assert token_hash(party.peer_token_file.read_text()) in auth  # type: ignore[union-attr]
    s0 = load_config(out / "s0" / "cluster.toml")
    assert s0.party(0).grpc_address == "10.77.0.10:50051" and s0.party(0).metrics_port == 9100
    assert (
        s0.party(1).mpc_address == "server-1.example.org:29501" and s0.party(1).metrics_port is None
    )
    dealer = load_config(out / "dealer" / "cluster.toml")
    assert dealer.dealer.mpc_address == "10.77.0.20:29600"
    for path in (dealer.dealer.tls_cert, dealer.dealer.tls_key, dealer.dealer.peer_token_file):
        assert path is not None and path.is_file()
    alice = load_config(out / "clients" / "alice" / "cluster.toml")
    assert alice.client_token_file is not None and alice.client_token_file.is_file()
    assert alice.ca_cert is not None and alice.ca_cert.is_file()
    ops = load_config(out / "clients" / "ops" / "cluster.toml")
    assert ops.monitor_token_file is not None and ops.monitor_token_file.is_file()
    assert ops.client_token_file is None
    # every host's file is the same topology (clients add only their [client] table)
    assert len({(out / n / "cluster.toml").read_text() for n in SERVERS}) == 1


def test_set_up_b_the_ca_operator_never_holds_an_organisations_key(tmp_path: Path) -> None:
    org = make_csr(tmp_path / "org-s1", "s1", ["server-1.example.org"])
    bundles = provision(tmp_path / "out", _plan(), {"s1": org.cert.read_bytes()})
    s1 = bundles.hosts["s1"]
    assert not (s1 / "tls" / "s1.key").exists()
    assert "tls/s1.key" in (s1 / "BUNDLE.txt").read_text()
    cert = x509.load_pem_x509_certificate((s1 / "tls" / "s1.pem").read_bytes())
    _verify(cert, x509.load_pem_x509_certificate(bundles.ca.cert.read_bytes()))
    assert _sans(cert) == ["server-1.example.org"]
    org_key = org.key.read_bytes()
    for file in _files(tmp_path / "out"):
        assert org_key not in file.read_bytes()
    # a CSR for another name, or for the wrong host, is refused
    other = make_csr(tmp_path / "other", "s2", ["10.77.0.12"])
    with pytest.raises(ValueError, match="expected 's1'"):
        provision(tmp_path / "out2", _plan(), {"s1": other.cert.read_bytes()})
    wrong_host = make_csr(tmp_path / "wrong", "s1", ["10.9.9.9"])
    with pytest.raises(ProvisionError, match="not its address"):
        provision(tmp_path / "out3", _plan(), {"s1": wrong_host.cert.read_bytes()})


def test_cli_csr_and_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "deploy",
                "init",
                "--out",
                str(tmp_path / "out"),
                *[arg for p in PARTIES for arg in ("--party", p)],
                "--dealer",
                DEALER,
                "--client",
                "alice",
            ]
        )
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "deploy",
                "csr",
                "--name",
                "s9",
                "--host",
                "10.1.2.3",
                "--host",
                "s9.example.org",
                "--out",
                str(tmp_path / "org"),
            ]
        )
    assert exit_.value.code == 0
    cert_path = tmp_path / "s9.pem"
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "deploy",
                "sign",
                "--ca",
                str(tmp_path / "out" / "ca"),
                "--csr",
                str(tmp_path / "org" / "s9.csr"),
                "--out",
                str(cert_path),
                "--name",
                "s9",
            ]
        )
    assert exit_.value.code == 0
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    _verify(cert, x509.load_pem_x509_certificate((tmp_path / "out" / "ca" / "ca.pem").read_bytes()))
    assert _sans(cert) == ["10.1.2.3", "s9.example.org"]
    # the CSR's key is the one that stayed with the organisation
    key = serialization.load_pem_private_key((tmp_path / "org" / "s9.key").read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    out = capsys.readouterr().out
    assert "PRIVATE KEY" not in out
    # the CA operator can pin the name it signs for
    pem = (tmp_path / "org" / "s9.csr").read_bytes()
    ca = TlsFiles(tmp_path / "out" / "ca" / "ca.pem", tmp_path / "out" / "ca" / "ca.key")
    with pytest.raises(ValueError, match="expected 'other'"):
        sign_csr(ca, pem, tmp_path / "x.pem", expect_name="other")
    assert not (tmp_path / "x.pem").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("s0=10.0.0.1:50051", "GRPC_PORT:MPC_PORT"),
        ("s0=10.0.0.1:50051:99999", "not a port"),
        ("10.0.0.1:1:2", "NAME=HOST"),
        ("ca=10.0.0.1:1:2", "not a usable name"),
        ("s0=bad_host!:1:2", "neither"),
    ],
)
def test_bad_party_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ProvisionError, match=message):
        parse_party(spec)


def test_inconsistent_plans_are_refused(tmp_path: Path) -> None:
    same = Plan(
        parties=(parse_party("a=10.0.0.1:1:2"), parse_party("b=10.0.0.1:1:3")),
        dealer=parse_dealer("d=10.0.0.3:4"),
        clients=("c",),
    )
    with pytest.raises(ProvisionError, match=r"both listen on 10\.0\.0\.1:1"):
        provision(tmp_path / "x", same)
    dup = Plan(
        parties=(parse_party("a=10.0.0.1:1:2"), parse_party("b=10.0.0.2:1:2")),
        dealer=parse_dealer("a=10.0.0.3:4"),
        clients=("c",),
    )
    with pytest.raises(ProvisionError, match="repeated"):
        provision(tmp_path / "y", dup)
    provision(tmp_path / "z", _plan())
    with pytest.raises(ProvisionError, match="not empty"):
        provision(tmp_path / "z", _plan())


def test_three_parties_and_no_dealer_provision_the_replicated_engine(tmp_path: Path) -> None:
    plan = Plan(parties=tuple(parse_party(p) for p in PARTIES), dealer=None, clients=("alice",))
    out = provision(tmp_path / "out", plan)
    assert sorted(out.hosts) == ["s0", "s1", "s2"]  # no dealer bundle
    for name in out.hosts:
        config = load_config(out.hosts[name] / "cluster.toml")
        assert config.engine == "replicated" and not config.has_dealer
        assert "[dealer]" not in (out.hosts[name] / "cluster.toml").read_text()
    two = Plan(parties=tuple(parse_party(p) for p in PARTIES[:2]), dealer=None, clients=("c",))
    with pytest.raises(ProvisionError, match="exactly three servers"):
        provision(tmp_path / "two", two)


def test_cli_init_without_a_dealer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["deploy", "init", "--out", str(tmp_path / "b"), "--client", "alice"]
    for party in PARTIES:
        args += ["--party", party]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    roles = [line.split()[1] for line in shown.split("CA key")[0].splitlines()[2:] if line.strip()]
    assert "dealer" not in roles and roles.count("server,") == 3
    assert load_config(tmp_path / "b" / "s1" / "cluster.toml").engine == "replicated"
