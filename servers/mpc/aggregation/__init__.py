"""Federated rounds in MPC: secure aggregation and the update checks.

* :mod:`.aggregate` — the (DP-)FedAvg average of the included updates;
* :mod:`.update_checks` — one opened validity bit per participant.
"""
