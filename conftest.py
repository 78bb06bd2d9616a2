"""Collects the documentation's code blocks as tests (tests/docs/harness.py)."""

from tests.docs.harness import make_sybil

pytest_collect_file = make_sybil().pytest()
