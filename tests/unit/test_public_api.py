"""One public API: what the README names is importable from ``ppml.client``."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import ppml.client
from ppml.client import errors

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_sdk_error_is_exported_and_listed() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.PpmlClientError)
    }
    assert defined <= set(ppml.client.__all__)
    for name in ppml.client.__all__:
        assert getattr(ppml.client, name) is not None


def test_every_error_in_the_readme_table_is_a_public_client_error() -> None:
    section = README.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert {"InvalidFederation", "ContextMismatch", "RoundClosed"} <= named
    for name in named:
        assert name in ppml.client.__all__, name
        assert issubclass(getattr(ppml.client, name), ppml.client.PpmlClientError), name


def test_the_cluster_the_settings_and_the_local_cluster_come_from_one_place() -> None:
    from ppml.client import Cluster, DpSettings, LocalCluster
    from ppml.client.deploy.local import LocalCluster as Home
    from ppml.proto.domain.federations import DpSettings as SettingsHome

    assert LocalCluster is Home and DpSettings is SettingsHome
    assert Cluster.from_config.__name__ == "from_config"


def test_readme_examples_import_only_the_public_api() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    imports = {m for block in blocks for m in re.findall(r"from (ppml[\w.]*) import", block)}
    assert imports and imports <= {"ppml.client", "ppml.training.datasets"}, imports


@pytest.mark.parametrize("old", ["ppml.servers.local", "ppml.proto.deploy.local"])
def test_the_old_local_cluster_paths_still_work_with_a_deprecation_hint(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="from ppml.client import LocalCluster"):
        module = importlib.import_module(old)
    assert module.LocalCluster is ppml.client.LocalCluster
