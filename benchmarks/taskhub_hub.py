"""Run a TaskHub hub in its own process, for when the ``taskhub`` command is not installed.

python benchmarks/taskhub_hub.py --port P --store memory://
"""

from __future__ import annotations

import argparse

from taskhub import Server
from taskhub.runtime import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default="memory://")
    args = parser.parse_args()
    run(Server(host=args.host, port=args.port, store=args.store).serve_forever())


if __name__ == "__main__":
    main()
