"""`python -m fgia.serve INDEX_DIR --host 127.0.0.1 --port 8000`."""

from __future__ import annotations

import argparse

from fgia.serve.config import ServeConfig
from fgia.serve.server import run


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the service."""
    parser = argparse.ArgumentParser(prog="python -m fgia.serve", description="Serve an fgia index over HTTP.")
    parser.add_argument("index_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batching", choices=("on", "off"), default="on")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--verify", action="store_true", help="check every index file's checksum before serving")
    args = parser.parse_args(argv)
    try:
        run(args.index_dir, host=args.host, port=args.port, device=args.device,
            config=ServeConfig(batching=args.batching), log_level=args.log_level, verify=args.verify)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
