"""The server's store of CKKS evaluation keys (one layer: no gRPC, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppml.client.he_keys import ClientKeys
from ppml.proto.errors import ErrorCode, PpmlError
from ppml.proto.he.params import param_set
from ppml.servers.he.contexts import ContextHeader, ContextStore

SET = param_set("n8192-d5")
HEADER = ContextHeader(SET.name, SET.poly_modulus_degree, SET.coeff_mod_bit_sizes)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    return ClientKeys(tmp_path_factory.mktemp("client"), SET.name)


def _parts(keys: ClientKeys) -> list[tuple[str, bytes]]:
    return list(keys.public_parts().items())


def test_stored_keys_survive_a_new_store_and_leave_memory_least_recent_first(
    tmp_path: Path, keys: ClientKeys
) -> None:
    store = ContextStore(tmp_path, max_loaded=2)
    infos = [store.upload(who, HEADER, _parts(keys)) for who in ("a", "b", "c")]
    assert {i.fingerprint for i in infos} == {keys.fingerprint}
    assert len(store._loaded) == 2 and ("a", SET.name) not in store._loaded
    fingerprint, loaded = store.keys("a", SET.name)  # read back from disk
    assert fingerprint == keys.fingerprint and loaded.galois.size() > 0
    assert ("b", SET.name) not in store._loaded
    reopened = ContextStore(tmp_path)
    assert reopened.info("c", SET.name).fingerprint == keys.fingerprint
    assert reopened.counts() == {"a": 1, "b": 1, "c": 1}
    reopened.delete("b", SET.name)
    with pytest.raises(PpmlError) as e:
        reopened.keys("b", SET.name)
    assert e.value.code == ErrorCode.CONTEXT_NOT_FOUND


def test_quotas_and_refusals_store_nothing(tmp_path: Path, keys: ClientKeys) -> None:
    store = ContextStore(tmp_path, max_bytes=1 << 20, max_identities=1)
    with pytest.raises(PpmlError) as e:
        store.upload("a", HEADER, _parts(keys))  # 42 MB > 1 MiB
    assert e.value.code == ErrorCode.RESOURCE_EXHAUSTED
    with pytest.raises(PpmlError, match="secret key"):
        store.upload("a", HEADER, [("secret_key", b"x")])
    with pytest.raises(PpmlError, match="lacks"):
        store.upload("a", HEADER, [])
    assert store.counts() == {}
    roomy = ContextStore(tmp_path, max_identities=1)
    roomy.upload("a", HEADER, _parts(keys))
    with pytest.raises(PpmlError) as e:
        roomy.upload("b", HEADER, _parts(keys))
    assert e.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert roomy.counts() == {"a": 1}
