"""Tests for ppml.proto.deploy.topology.load_config (the topology file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppml.client.deploy.local import write_local_topology
from ppml.proto.deploy.topology import ConfigError, ServingConfig, load_config


def _party(name: str, grpc_port: int, mpc_port: int, extra: str = "") -> str:
    return (
        "[[parties]]\n"
        f'name = "{name}"\n'
        f'grpc_address = "127.0.0.1:{grpc_port}"\n'
        f'mpc_address = "127.0.0.1:{mpc_port}"\n'
        f"{extra}\n"
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def _two_parties(serving: str = "") -> str:
    return _party("a", 5001, 6001) + _party("b", 5002, 6002) + serving


# ---------------------------------------------------------------- valid files


def test_local_topology_loads(tmp_path: Path) -> None:
    path = write_local_topology(tmp_path, 3)
    config = load_config(path)
    assert config.path == path.resolve()
    assert config.name == "local"
    assert config.world_size == 3
    assert [p.rank for p in config.parties] == [0, 1, 2]
    assert [p.name for p in config.parties] == ["server-0", "server-1", "server-2"]
    assert config.leader is config.parties[0]
    assert len({p.grpc_address for p in config.parties}) == 3
    for party in config.parties:
        assert party.grpc_host == "127.0.0.1"
        assert party.mpc_host_port[0] == "127.0.0.1"
        assert party.tls_cert is not None and party.tls_cert.is_file()
        assert party.tls_key is not None and party.tls_key.is_file()
        assert party.auth_file is not None and party.auth_file.is_file()
        assert party.data_dir == tmp_path.resolve() / "data" / party.name
    ports = [p.metrics_port for p in config.parties]
    assert all(isinstance(port, int) for port in ports) and len(set(ports)) == 3
    assert config.ca_cert is not None and config.ca_cert.is_file()
    assert config.client_token_file is not None and config.client_token_file.is_file()
    assert config.monitor_token_file is not None and config.monitor_token_file.is_file()
    peer_files = [p.peer_token_file for p in config.parties] + [config.dealer.peer_token_file]
    assert all(f is not None and f.is_file() for f in peer_files)
    tokens = {f.read_text() for f in peer_files if f is not None}
    assert len(tokens) == 4  # every server and the dealer has its own peer identity
    assert config.dealer_name == "dealer"
    assert [config.peer_name(r) for r in range(4)] == ["server-0", "server-1", "server-2", "dealer"]
    assert config.serving == ServingConfig()
    assert config.party(2) is config.parties[2]


@pytest.mark.parametrize("rank", [-1, 3])
def test_party_out_of_range(tmp_path: Path, rank: int) -> None:
    config = load_config(_write(tmp_path, _two_parties() + _party("c", 5003, 6003)))
    with pytest.raises(ConfigError, match="rank"):
        config.party(rank)


def test_local_topology_serving_overrides(tmp_path: Path) -> None:
    path = write_local_topology(tmp_path, 2, {"max_batch_rows": 8, "max_wait_ms": 0.5})
    serving = load_config(path).serving
    assert serving.max_batch_rows == 8
    assert isinstance(serving.max_batch_rows, int)
    assert serving.max_wait_ms == 0.5
    assert serving.heartbeat_s == ServingConfig().heartbeat_s


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    text = (
        '[cluster]\nca_cert = "tls/ca.pem"\n\n'
        + _party(
            "a",
            5001,
            6001,
            'tls_cert = "tls/a.pem"\nauth_file = "../shared/a.toml"\n'
            'peer_token_file = "/abs/peer.token"',
        )
        + _party("b", 5002, 6002, 'data_dir = "/var/lib/ppml/b"')
        + '[client]\ntoken_file = "secrets/client.token"\n'
    )
    _write(folder, text)
    monkeypatch.chdir(tmp_path)  # the loader must not resolve against the cwd
    config = load_config("deploy/cluster.toml")
    base = folder.resolve()
    assert config.path == base / "cluster.toml"
    assert config.ca_cert == base / "tls" / "ca.pem"
    assert config.parties[0].peer_token_file == Path("/abs/peer.token")
    assert config.parties[0].tls_cert == base / "tls" / "a.pem"
    assert config.parties[0].tls_key is None
    assert config.parties[0].auth_file == base / ".." / "shared" / "a.toml"
    assert config.parties[0].data_dir == base / "data" / "a"  # default
    assert config.parties[1].data_dir == Path("/var/lib/ppml/b")
    assert config.client_token_file == base / "secrets" / "client.token"
    assert config.monitor_token_file is None


def test_defaults_for_optional_sections(tmp_path: Path) -> None:
    text = (
        "[[parties]]\n"
        'grpc_address = "h0:1"\nmpc_address = "h0:2"\n'
        "[[parties]]\n"
        'grpc_address = "h1:1"\nmpc_address = "h1:2"\n'
    )
    config = load_config(_write(tmp_path, text))
    assert [p.name for p in config.parties] == ["server-0", "server-1"]
    assert config.name == "ppml"
    assert config.ca_cert is None
    assert config.dealer_name == "dealer"
    assert config.serving == ServingConfig()
    assert config.parties[0].metrics_port is None


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as excinfo:
        load_config(missing)
    assert str(missing) in str(excinfo.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[parties]\nname = ")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


@pytest.mark.parametrize(
    "text", ["", '[cluster]\nname = "x"\n', _party("a", 5001, 6001), "parties = 3\n"]
)
def test_fewer_than_two_parties(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="at least two"):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.1:", ":5000", "127.0.0.1:0", "127.0.0.1:65536", "host:http", "host:-1"],
)
@pytest.mark.parametrize("key", ["grpc_address", "mpc_address"])
def test_bad_address(tmp_path: Path, address: str, key: str) -> None:
    good = {"grpc_address": "127.0.0.1:5002", "mpc_address": "127.0.0.1:6002"}
    good[key] = address
    text = (
        _party("a", 5001, 6001)
        + "[[parties]]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in good.items())
    )
    with pytest.raises(ConfigError, match=rf"parties\[1\]\.{key}") as excinfo:
        load_config(_write(tmp_path, text))
    assert "host:port" in str(excinfo.value)


def test_missing_address(tmp_path: Path) -> None:
    text = _party("a", 5001, 6001) + '[[parties]]\nname = "b"\nmpc_address = "h:1"\n'
    with pytest.raises(ConfigError, match=r"parties\[1\]\.grpc_address"):
        load_config(_write(tmp_path, text))


def test_duplicate_names(tmp_path: Path) -> None:
    text = _party("same", 5001, 6001) + _party("same", 5002, 6002)
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path, text))


def test_duplicate_grpc_address(tmp_path: Path) -> None:
    text = _party("a", 5001, 6001) + _party("b", 5001, 6002)
    with pytest.raises(ConfigError, match="grpc_address"):
        load_config(_write(tmp_path, text))


def test_unknown_serving_key(tmp_path: Path) -> None:
    path = _write(tmp_path, _two_parties("[serving]\nmax_batch_size = 8\n"))
    with pytest.raises(ConfigError, match="max_batch_size") as excinfo:
        load_config(path)
    assert "max_batch_rows" in str(excinfo.value)  # lists the known keys


@pytest.mark.parametrize(
    "line",
    [
        "max_batch_rows = 0",
        "max_wait_ms = -1.0",
        "heartbeat_s = 0.0",
        "heartbeat_s = true",
        'default_timeout_s = "30"',
        "max_rows_per_request = -4096",
    ],
)
def test_non_positive_serving_value(tmp_path: Path, line: str) -> None:
    key = line.split(" ")[0]
    path = _write(tmp_path, _two_parties(f"[serving]\n{line}\n"))
    with pytest.raises(ConfigError, match=rf"\[serving\] {key} must be a positive number"):
        load_config(path)


def test_empty_path_value(tmp_path: Path) -> None:
    path = _write(tmp_path, _party("a", 5001, 6001, 'tls_cert = ""') + _party("b", 5002, 6002))
    with pytest.raises(ConfigError, match="tls_cert"):
        load_config(path)


@pytest.mark.parametrize("value", ["0", "65536", '"9100"', "true", "91.5"])
def test_bad_metrics_port(tmp_path: Path, value: str) -> None:
    extra = f"metrics_port = {value}"
    path = _write(tmp_path, _party("a", 5001, 6001, extra) + _party("b", 5002, 6002))
    with pytest.raises(ConfigError, match=r"parties\[0\]\.metrics_port must be a port"):
        load_config(path)


def test_a_shared_cluster_peer_token_is_refused(tmp_path: Path) -> None:
    text = '[cluster]\npeer_token_file = "secrets/peer.token"\n\n' + _two_parties()
    with pytest.raises(ConfigError, match="its own peer_token_file"):
        load_config(_write(tmp_path, text))


def test_fast_inference_is_a_flag(tmp_path: Path) -> None:
    """``LocalCluster(serving={"fast_inference": False})`` writes ``false``, which loads."""
    assert load_config(_write(tmp_path, _two_parties())).serving.fast_inference is True
    off = _write(tmp_path, _two_parties("[serving]\nfast_inference = false\n"))
    assert load_config(off).serving.fast_inference is False
    bad = _write(tmp_path, _two_parties("[serving]\nfast_inference = 1\n"))
    with pytest.raises(ConfigError, match=r"\[serving\] fast_inference must be true or false"):
        load_config(bad)
    local = write_local_topology(tmp_path / "local", 2, {"fast_inference": False})
    assert load_config(local).serving.fast_inference is False


def test_fast_pool_bundles_may_be_zero_but_not_negative(tmp_path: Path) -> None:
    zero = _write(tmp_path, _two_parties("[serving]\nfast_pool_bundles = 0\n"))
    assert load_config(zero).serving.fast_pool_bundles == 0
    bad = _write(tmp_path, _two_parties("[serving]\nfast_pool_bundles = -1\n"))
    with pytest.raises(ConfigError, match=r"fast_pool_bundles must be a positive number or 0"):
        load_config(bad)


# ---------------------------------------------------------------- engines


def test_replicated_engine_takes_three_parties_and_no_dealer(tmp_path: Path) -> None:
    config = load_config(write_local_topology(tmp_path, 3, engine="replicated"))
    assert config.engine == "replicated" and not config.has_dealer
    assert config.leader_links == 2  # the two followers, no dealer
    dealer = load_config(write_local_topology(tmp_path / "d", 3))
    assert dealer.engine == "dealer" and dealer.has_dealer and dealer.leader_links == 3


def test_replicated_engine_refuses_other_party_counts(tmp_path: Path) -> None:
    text = '[cluster]\nengine = "replicated"\n' + _two_parties()
    with pytest.raises(ConfigError, match="exactly 3"):
        load_config(_write(tmp_path, text))


def test_replicated_engine_refuses_a_dealer_section(tmp_path: Path) -> None:
    text = (
        '[cluster]\nengine = "replicated"\n'
        + _two_parties()
        + _party("c", 5003, 6003)
        + '[dealer]\nmpc_address = "127.0.0.1:7000"\n'
    )
    with pytest.raises(ConfigError, match="no dealer"):
        load_config(_write(tmp_path, text))


def test_an_unknown_engine_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    text = '[cluster]\nengine = "spdz"\n' + _two_parties()
    with pytest.raises(ConfigError, match=r"'dealer'.*'replicated'"):
        load_config(_write(tmp_path, text))
