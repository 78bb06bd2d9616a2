"""``ppml-server``: run one compute server of a cluster from its topology file."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import torch

from ppml.proto.deploy.topology import load_config
from ppml.servers.app import ComputeServer


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
    server = ComputeServer(config, args.rank, insecure=args.insecure)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
