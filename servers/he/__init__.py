"""Single-server CKKS inference: evaluate a plaintext model on a client's ciphertexts."""
