"""``ppml fl``'s own checks and formatting, without a cluster (tests/integration/test_cli.py
runs the commands against one)."""

from __future__ import annotations

import math
import stat
from pathlib import Path

import pytest

from ppml.client.cli import app as cli
from ppml.client.cli import federation as cli_federation
from ppml.client.cli import federation_text as cli_federation_text
from ppml.client.cli.common import CliError
from ppml.proto.domain import federations as fed
from ppml.proto.domain.architecture import Architecture, Linear


def _create_args(*extra: str) -> list[str]:
    base = ["fl", "create", "--config", "c.toml", "--model", "m.onnx"]
    return [*base, "--participants", "a, b,", "--rounds", "2", *extra]


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code != 0
    return capsys.readouterr().err.strip()


def test_dp_flags_become_settings() -> None:
    parser = cli._parser()
    args = parser.parse_args(
        _create_args("--dp-clip", "1.5", "--dp-target-epsilon", "4", "--dp-budget", "6")
    )
    assert cli_federation._dp_settings(args) == fed.DpSettings(
        clip_norm=1.5, target_epsilon=4.0, delta=1e-5, epsilon_budget=6.0
    )
    assert cli_federation._participants(args.participants) == ["a", "b"]
    assert cli_federation._dp_settings(parser.parse_args(_create_args())) == fed.DpSettings()
    with pytest.raises(CliError, match="needs --dp-noise-multiplier or --dp-target-epsilon"):
        cli_federation._dp_settings(parser.parse_args(_create_args("--dp-clip", "1")))


def test_bad_create_arguments_fail_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not used")
    argv = [*_create_args(), "--model", str(model)]  # the last --model wins
    assert _fail([*argv, "--backend", "ckks"], capsys) == (
        "ppml: error: --ckks-keys-out DIR is needed with --backend ckks (the participants' "
        "key file goes there), and only then"
    )
    error = _fail([*argv, "--dp-noise-multiplier", "1", "--dp-target-epsilon", "2"], capsys)
    assert "not allowed with argument" in error  # argparse: one or the other
    assert not list(tmp_path.glob("*.ckks-context"))


def test_ckks_context_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = cli_federation._write_context(str(tmp_path / "keys"), "fl-1", b"secret")
    assert path == tmp_path / "keys" / "fl-1.ckks-context"
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    with pytest.raises(CliError, match="not overwriting"):
        cli_federation._write_context(str(tmp_path / "keys"), "fl-1", b"other")
    assert path.read_bytes() == b"secret"


def _info(dp: fed.DpSettings, **changes: object) -> fed.FederationInfo:
    architecture = Architecture((Linear(4, 3),), (4,), (3,))
    spec = fed.FederationSpec(("a", "b"), 5, dp=dp)
    return fed.FederationInfo("f", "f-model", "", "alice", architecture, spec).evolve(**changes)


def test_epsilon_and_round_are_described() -> None:
    assert cli_federation_text.describe_epsilon(_info(fed.DpSettings())) == "off"
    targeted = _info(fed.DpSettings(1.0, target_epsilon=4.0), epsilon_spent=1.234, round=3)
    assert cli_federation_text.describe_epsilon(targeted) == "1.23/4"
    assert cli_federation_text.round_of(targeted) == "3/5"
    unlimited = _info(fed.DpSettings(1.0, noise_multiplier=1.1))
    assert cli_federation_text.epsilon_budget(unlimited.spec.dp) == math.inf
    assert cli_federation_text.describe_epsilon(unlimited) == "0.00/unlimited"
    ended = targeted.evolve(state=fed.FederationState.CANCELLED, results=())
    assert cli_federation_text.round_of(ended) == "0/5"  # rounds closed once it ended
