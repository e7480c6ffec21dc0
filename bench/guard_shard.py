"""One Lambda execution environment of the org-run's guard shards, for bench_guard_org.py: this process imports
`fleetwarden.lambda_handler` (the cold start's import), then calls `handler(event, None)` once per event in
order (the first invocation is the cold one, the next ones warm, as one Lambda container would serve them).

    python bench/guard_shard.py EVENTS.json     # FLEETWARDEN_CONFIG, AWS_ENDPOINT_URL, credentials from the env

Prints one JSON line: `t0` (time.time() before the imports), `imported` and, per invocation, its start and end
(time.time()), status, exit code and the handler's summary of actions.
"""

from __future__ import annotations

import time

T0 = time.time()

import json  # noqa: E402 - T0 is taken before the imports, like a process start
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from fleetwarden.lambda_handler import handler  # noqa: E402


def main() -> int:
    events: list[dict[str, Any]] = json.loads(Path(sys.argv[1]).read_text())
    imported = time.time()
    invocations: list[dict[str, Any]] = []
    for event in events:
        started = time.time()
        result = handler(event, None)
        ended = time.time()
        summary = result.get("summary") or {}
        invocations.append(
            {
                "shard": event.get("shard"),
                "accounts": len(event.get("accounts", [])),
                "start": started,
                "end": ended,
                "status": result.get("status"),
                "exit_code": result.get("exit_code"),
                "actions": summary.get("actions") if isinstance(summary, dict) else None,
                "error": result.get("error"),
            }
        )
    print(json.dumps({"t0": T0, "imported": imported, "invocations": invocations}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
