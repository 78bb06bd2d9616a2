"""The deployment contract every ppml process reads: shared by the servers, the dealer, the SDK
and the dashboard.

* :mod:`.topology` — the topology file (``cluster.toml``) and its limits;
* :mod:`.tls` — the CA and certificate layout;
* :mod:`.tokens` — bearer tokens, secret and auth files;
* :mod:`.channels` — gRPC channel set-up (TLS, tokens, message sizes).

The operator's tools that *write* this layout (``LocalCluster``, per-host
provisioning, link checks) live in :mod:`ppml.client.deploy`;
:mod:`.local` here is only a deprecated alias of :mod:`ppml.client.deploy.local`.
"""
