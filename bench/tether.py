"""``python -m bench.tether CMD...``: run CMD until this process's stdin closes.

The benchmark starts long-running helpers it did not write (``kernelsup run``) through
this tether, with a pipe as stdin. When the benchmark ends, is interrupted, or dies
(even by SIGKILL), the pipe closes; the tether then stops CMD with SIGINT (its clean
stop), waits ``GRACE_S``, and SIGKILLs it. If CMD exits first, the tether exits with its
status. CMD's stdout and stderr are the tether's. The benchmark starts the tether in a session
of its own, so a Ctrl-C in the terminal reaches the benchmark only, which then stops
everything in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

GRACE_S = 20.0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.tether CMD [ARGS...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def watch_stdin() -> None:
        fd = sys.stdin.fileno()
        while os.read(fd, 4096):
            pass
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()

    threading.Thread(target=watch_stdin, daemon=True).start()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
