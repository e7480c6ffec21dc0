"""Runs a command and writes its own peak RSS and CPU time (os.wait4) as JSON: `_rusage.py OUT -- CMD...`.

The benchmark starts this small launcher instead of the tool directly: Linux carries a process's peak RSS
across fork+exec, so a tool forked straight from the (large) benchmark process would report the benchmark's
peak as its own. Forked from this small launcher, the tool's ru_maxrss is its own. Exits with the tool's code.
"""

import json
import os
import sys


def main() -> int:
    out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    if sep != "--" or not cmd:
        print("usage: _rusage.py OUT -- CMD...", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid == 0:  # the child: become the tool
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}, fh)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
