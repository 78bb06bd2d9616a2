"""``ppml-dealer``: the trusted dealer (CrypTen's TTP) for a cluster.

The dealer generates correlated randomness (Beaver triples, wrap counts,
binary-to-arithmetic bits, truncation pairs) for the compute parties. It never receives data,
shares of data or models: only requests for randomness of given sizes. It
must not collude with any compute server.

It differs from CrypTen's ``TTPServer`` in three ways:

* its per-party streams are AES-256-CTR keystreams under fresh 256-bit keys
  from the OS CSPRNG, each key sent only to its party over that party's
  mutually authenticated TLS link (:func:`ppml.servers.mpc.randomness.prng.deal_party_keys`);
  CrypTen's own TTP seeds a Mersenne Twister (32 effective bits) from torch's
  default generator;
* it computes triples only for an allow-list of bilinear ops;
* it serves epoch after epoch: it links to the leader over TLS, joins each
  MPC session the leader starts (listening on its ``[dealer] mpc_address``;
  every party dials it), and rejoins after a failure;
* it answers a *plan* (:mod:`ppml.servers.mpc.core.ttp_plan`): a recorded
  sequence of requests in one message, answered one by one as each is made,
  so it works ahead of rank 0;
* it also deals the fast inference engine's material (model setups and
  per-forward bundles, :mod:`ppml.servers.mpc.fast.service.dealing`), sending each
  party its own part over that party's link.
"""

from __future__ import annotations

import argparse
import logging
import queue
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any

from ppml.proto.deploy.topology import ClusterConfig, load_config
from ppml.proto.domain import commands as cmd
from ppml.servers.control.leader_link import LeaderLink
from ppml.servers.mpc import epochs
from ppml.servers.mpc import session as mpc_session
from ppml.servers.mpc.core import truncation, ttp_plan
from ppml.servers.mpc.core.crypten_compat import crypten
from ppml.servers.mpc.fast.service import dealing as fast_dealing
from ppml.servers.mpc.network import transport
from ppml.servers.mpc.network.mesh import SessionParams
from ppml.servers.mpc.randomness import prng

log = logging.getLogger("ppml.dealer")
STATS_INTERVAL_S = 1.0
# what a party may ask for
FUNCTIONS = ("additive", "square", "binary", "wraps", "B2A", truncation.FUNCTION)
# the bilinear ops CrypTen multiplies with Beaver triples: the only ops the dealer runs
BEAVER_OPS = frozenset(
    {"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}
)
TTPServer: Any = crypten.mpc.provider.ttp_provider.TTPServer


class Dealer(TTPServer):
    """CrypTen's TTP functions, CSPRNG-seeded, one session per ``serve`` call."""

    def __init__(self) -> None:  # do not run TTPServer's blocking __init__
        self.requests: Counter[str] = Counter()
        self.sessions = 0
        self._lock = threading.Lock()
        self.fast = fast_dealing.FastDealing()

    def additive(self, size0: Any, size1: Any, op: str, *args: Any, **kwargs: Any) -> Any:
        """A Beaver triple for ``op``; the op name comes from the network: allow-listed."""
        if op not in BEAVER_OPS:
            raise ValueError(f"the dealer does not make triples for {op!r}")
        return super().additive(size0, size1, op, *args, **kwargs)

    def trunc(self, size: Any, divisor: Any) -> Any:
        """Party 0's part of an exact truncation (:mod:`ppml.servers.mpc.core.truncation`)."""
        return truncation.dealer_trunc(self, size, divisor)

    def _count(self, function: str) -> None:
        with self._lock:
            self.requests[function] += 1

    def stats(self) -> cmd.DealerStats:
        with self._lock:
            return cmd.DealerStats(dict(self.requests), self.sessions)

    def _setup_generators(self) -> None:
        prng.deal_party_keys(self)

    def serve(self) -> str:
        """Serve one session until rank 0 ends it or a party fails; returns why."""
        crypten.init()
        self.sessions += 1
        comm = crypten.communicator.get()
        self.ttp_group = comm.ttp_group
        self.comm_group = comm.ttp_comm_group
        self.device = "cpu"
        self.fast = fast_dealing.FastDealing()  # model keys live for one session
        self._setup_generators()
        ttp_rank = comm.get_ttp_rank()
        try:
            while True:
                message = comm.recv_obj(0, self.ttp_group)
                if message == "terminate":
                    return "session ended by the leader"
                function = message["function"]
                if function not in (*FUNCTIONS, *fast_dealing.FUNCTIONS, ttp_plan.BATCH):
                    return f"unknown request {function!r}"
                if function in fast_dealing.FUNCTIONS:  # each party gets its own part
                    self._count(function)
                    payloads = self.fast.handle(function, tuple(message["args"]))
                    sending = [  # to both parties at once: neither waits for the other to read
                        request
                        for party, payload in enumerate(payloads)
                        for request in comm.post_frames(fast_dealing.frames(payload), party)
                    ]
                    for request in sending:
                        request.wait()
                    continue
                for request in _requests(message):
                    self._count(request["function"])
                    self.device = request["device"]
                    result = getattr(self, request["function"])(
                        *request["args"], **request["kwargs"]
                    )
                    comm.send_obj(result.size(), 0, self.ttp_group)
                    comm.broadcast(result, ttp_rank, self.comm_group)
        except RuntimeError as err:
            return f"session failed: {err}"
        except (ValueError, TypeError) as err:  # a request the dealer refuses
            return f"refused a request: {err}"
        finally:
            self.fast.close()
            mpc_session.leave()


def _requests(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The TTP requests in a message: itself, or the items of a plan (checked)."""
    if message["function"] != ttp_plan.BATCH:
        return [message]
    (items,) = message["args"]
    if not isinstance(items, list) or len(items) > ttp_plan.MAX_PLAN:
        raise ValueError("a plan must be a list of at most MAX_PLAN requests")
    for item in items:
        if not isinstance(item, dict) or item.get("function") not in FUNCTIONS:
            raise ValueError("a plan may hold only TTP requests")
        if not isinstance(item.get("args"), tuple) or not isinstance(item.get("kwargs"), dict):
            raise ValueError("a planned request needs args and kwargs")
    return items


def serve_epoch(dealer: Dealer, params: SessionParams) -> str:
    """Serve epoch ``params.epoch`` until rank 0 ends it or a party fails; returns why.

    The dealer is rank ``world_size``: it listens on ``params.peers[world_size]``
    (once, for the life of the process) and every party dials it. Raises
    ``RuntimeError`` if the parties do not all link within the join timeout.
    """
    if params.rank != params.world_size:
        raise ValueError("the dealer has rank world_size")
    mpc_session.install()
    mpc_session.configure_crypten()
    transport.configure(params)
    return dealer.serve()


def run(config: ClusterConfig, insecure: bool) -> None:
    import torch

    torch.set_num_threads(config.serving.torch_threads)
    token_file = config.dealer.peer_token_file
    token = token_file.read_text().strip() if token_file else ""
    joins: queue.Queue[cmd.JoinEpoch] = queue.Queue()

    def on_message(message: cmd.LeaderCommand) -> None:
        if isinstance(message, cmd.JoinEpoch):
            joins.put(message)

    hello = cmd.Hello(rank=config.world_size, role="dealer", incarnation=secrets.token_hex(8))
    link = LeaderLink(
        config.leader.grpc_address,
        None if insecure else config.ca_cert,
        token,
        hello,
        on_message,
        lambda reason: log.info("%s", reason),
        {},  # the leader sends the dealer epochs only, never jobs
    )
    link.start()
    dealer = Dealer()

    def report_stats() -> None:  # running totals for the leader's status and dashboard
        while True:
            time.sleep(STATS_INTERVAL_S)
            link.send(dealer.stats())

    threading.Thread(target=report_stats, name="dealer-stats", daemon=True).start()
    log.info(
        "dealer %s waiting for the leader at %s", config.dealer_name, config.leader.grpc_address
    )
    while True:
        join = joins.get()
        while not joins.empty():  # only the newest epoch matters
            join = joins.get()
        log.info("joining MPC epoch %d", join.epoch)
        try:
            reason = serve_epoch(
                dealer, epochs.session_params(config, config.world_size, join.tag)
            )
        except RuntimeError as err:  # the parties did not all link in time
            reason = f"could not join: {err}"
            mpc_session.leave()
        log.info(
            "epoch %d over: %s (requests so far: %s)", join.epoch, reason, dict(dealer.requests)
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ppml-dealer", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="topology file (cluster.toml)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (logs a warning)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.insecure:
        log.warning("dealer running WITHOUT TLS on its link to the leader (--insecure)")
    try:
        run(load_config(args.config), args.insecure)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
