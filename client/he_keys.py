"""The client's CKKS keys: made here, kept here, only the public half uploaded.

One key set per cluster identity and parameter set, in a folder beside the
identity's token (``<token file>.ckks/<param_set>/``, mode 0700): the secret
key (``secret.seal``, mode 0600) and the evaluation keys generated from it
(relinearisation, and Galois keys for rotations by every power of two). The
server receives only the evaluation keys (:meth:`ClientKeys.public_parts`);
it can compute on ciphertexts made with them but not decrypt them.

Inputs are encrypted *symmetrically* with the secret key: SEAL then saves
half of each ciphertext as a seed, which halves the upload. Decrypted outputs
stay here: CKKS is not IND-CPA-D secure (Li and Micciancio, 2021), so results
must not go back to the server unrounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tenseal import sealapi

from ppml.proto.he import seal_io
from ppml.proto.he.params import CkksParamSet, param_set

Floats = npt.NDArray[np.float64]


class ClientKeys:
    """A secret key and its evaluation keys for one parameter set."""

    def __init__(self, folder: Path, set_name: str) -> None:
        self.params: CkksParamSet = param_set(set_name)
        self.context = seal_io.seal_context(self.params)
        self.folder = Path(folder) / self.params.name
        secret_file = self.folder / "secret.seal"
        if secret_file.exists():
            self.secret = seal_io.load(sealapi.SecretKey(), self.context, secret_file.read_bytes())
            self._relin = (self.folder / "relin.seal").read_bytes()
            self._galois = (self.folder / "galois.seal").read_bytes()
        else:
            self._create(secret_file)
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.encryptor = sealapi.Encryptor(self.context, self.secret)
        self.decryptor = sealapi.Decryptor(self.context, self.secret)
        self.fingerprint = seal_io.fingerprint(self.public_parts())

    def _create(self, secret_file: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        generator = sealapi.KeyGenerator(self.context)
        self.secret = generator.secret_key()
        self._relin = seal_io.to_bytes(generator.create_relin_keys())
        self._galois = seal_io.to_bytes(generator.create_galois_keys())
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seal_io.to_bytes(self.secret))
        (self.folder / "relin.seal").write_bytes(self._relin)
        (self.folder / "galois.seal").write_bytes(self._galois)

    def public_parts(self) -> dict[str, bytes]:
        """What the server may hold: evaluation keys only, never the secret key."""
        return {"relin_keys": self._relin, "galois_keys": self._galois}

    def encrypt(self, values: Floats) -> bytes:
        plain = sealapi.Plaintext()
        self.encoder.encode(list(map(float, values)), 2.0**self.params.scale_bits, plain)
        return seal_io.to_bytes(self.encryptor.encrypt_symmetric(plain))

    def decrypt(self, blob: bytes) -> Floats:
        ct = seal_io.load(sealapi.Ciphertext(), self.context, blob)
        plain = sealapi.Plaintext()
        self.decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain), dtype=np.float64)
