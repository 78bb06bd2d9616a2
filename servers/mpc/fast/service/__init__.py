"""The fast engine's service side: how the servers and the dealer use :mod:`ppml.servers.mpc.fast`.

* :mod:`.spec` — which architectures the fast engine serves, and their layout;
* :mod:`.dealing` — the dealer's model keys and bundles;
* :mod:`.pool` — a party's pool of single-use bundles;
* :mod:`.party` — ``FastInference``: one party's fast predictions.

:mod:`ppml.servers.mpc.fast` itself stays numpy only and never imports this package.
"""
