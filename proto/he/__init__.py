"""Single-server encrypted inference with CKKS: what client and server share.

The parameter table (:mod:`.params`), the model plan a server evaluates
(:mod:`.plan`), the slot layout both sides agree on (:mod:`.layout`) and SEAL
objects to and from bytes (:mod:`.seal_io`). docs/architecture.md, "CKKS
inference", explains the whole mode.
"""
