"""``ppml-server``: run one compute server of a cluster from its topology file."""

from __future__ import annotations

import argparse
import logging
import signal

import torch

from ppml.proto.deploy.topology import load_config
from ppml.servers.app import ComputeServer

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}  # stop serving, then exit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ppml-server", description=__doc__)
    parser.add_argument("--config", required=True, help="topology file (cluster.toml)")
    parser.add_argument("--rank", type=int, required=True, help="this server's rank")
    parser.add_argument("--insecure", action="store_true", help="serve without TLS (warns)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{args.rank} %(name)s %(levelname)s %(message)s",
    )
    config = load_config(args.config)
    torch.set_num_threads(config.serving.torch_threads)
    # The stop signals are blocked in every thread (threads inherit the mask) and taken by
    # sigwait here. A Python handler that sets an Event deadlocks when the signal lands while
    # this thread holds that Event's lock inside Event.wait: the server then never stops.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    server = ComputeServer(config, args.rank, insecure=args.insecure)
    server.start()
    signal.sigwait(STOP_SIGNALS)
    server.stop()


if __name__ == "__main__":
    main()
