"""Run the emulator in the foreground: `python -m fleetwarden.emulator --port 0 --latency-ms 50`.

Prints `READY http://127.0.0.1:PORT` on stdout once it serves (benchmarks read that line), and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .server import EmulatorServer


def _latency(text: str) -> float | list[float]:
    """`50` or `50-100` (milliseconds)."""
    try:
        if "-" in text:
            lo, hi = text.split("-", 1)
            return [float(lo), float(hi)]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds as N or LO-HI, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleetwarden.emulator",
        description="fleetwarden's embedded AWS emulator (moto server + extensions) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one; default 0)")
    parser.add_argument("--latency-ms", type=_latency, default=None, help="added to every AWS request: N or LO-HI")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='a fault rule, e.g. \'{"region": "eu-west-3", "mode": "throttle", "probability": 0.2}\' (repeatable)',
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for latency ranges and fault draws")
    parser.add_argument("--log-requests", action="store_true", help="print an access log line per request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults = [json.loads(rule) for rule in args.fault]
    except json.JSONDecodeError as exc:
        print(f"--fault: not JSON: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = EmulatorServer(
        port=args.port, latency_ms=args.latency_ms, faults=faults, seed=args.seed, log_requests=args.log_requests
    )
    try:
        server.start()
    except ValueError as exc:  # a bad fault rule or latency
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"READY {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
