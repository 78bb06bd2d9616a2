"""One compute party's side of a training job: the maths on shares.

* :mod:`.trainer` — a training run (epochs of secret batches, evaluation);
* :mod:`.dpsgd` — DP-SGD's clipped, noised step;
* :mod:`.standardize` — secret per-feature standardisation.

The plaintext definitions live in :mod:`ppml.training`.
"""
