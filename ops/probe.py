"""``python -m ops.probe URL``: exit 0 when URL answers 200, 1 otherwise.

For container health checks and systemd watchdogs where no curl is installed: a worker's
or the dispatcher's ``http://127.0.0.1:$BLENDQ_METRICS_PORT/readyz`` (or ``/healthz``),
the API's ``/readyz``. Prints the body, so a failing probe says which check failed.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace")[:2000])
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 and the like: the body names the failure
        print(exc.read().decode(errors="replace")[:2000])
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ops.probe URL", file=sys.stderr)
        return 2
    return probe(argv[0])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
