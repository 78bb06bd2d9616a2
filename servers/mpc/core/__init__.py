"""CrypTen as ppml runs it: the lowest layer of the MPC engine.

* :mod:`.crypten_compat` — the documented patches that make CrypTen 0.4.1 run
  on torch 2.13 (import CrypTen only through it);
* :mod:`.ttp_plan` — dealer requests recorded once and asked for ahead;
* :mod:`.model` — CrypTen models whose parameters are this party's shares;
* :mod:`.clipping` — range-checked norm clipping on shares (DP-SGD and DP-FedAvg).

Imports nothing else of the servers.
"""
