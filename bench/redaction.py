"""Cost of redaction on the API/CLI/log path: milliseconds per megabyte, by number of secrets.

    python bench/redaction.py

Rows: plain text, text dense with assignments (``key=value`` pairs), a long run of one
letter (the worst case for the assignment pattern), JSON results walked by redact_value,
and a log event. Each figure is the best of 5 runs; it should grow with the text, not with
its square.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from typing import Any

from stepline.redact import redact_processor, redact_text, redact_value


def best_ms(action: Callable[[], Any], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def words(size: int, rng: random.Random) -> str:
    out: list[str] = []
    total = 0
    while total < size:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
        out.append(word)
        total += len(word) + 1
    return " ".join(out)[:size]


def secrets(n: int, rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_letters + string.digits, k=16)) for _ in range(n)]


def main() -> None:
    rng = random.Random(7)
    mb = 1_000_000
    texts = {
        "prose 1 MB": words(mb, rng),
        "assignments 1 MB": " ".join(f"k{i}=v{i} password=p{i}" for i in range(45_000))[:mb],
        "one letter 1 MB": "a" * mb,
        "prose 4 MB": words(4 * mb, rng),
    }
    payload = [
        {"id": i, "note": words(80, rng), "url": f"https://h/x?token=t{i}"} for i in range(10_000)
    ]
    print(f"{'input':<22}" + "".join(f"{n:>10} secrets" for n in (0, 10, 1000)))
    for name, text in texts.items():
        cells = [
            best_ms(lambda s=s, t=text: redact_text(t, s))
            for s in (secrets(n, rng) for n in (0, 10, 1000))
        ]
        print(f"{name:<22}" + "".join(f"{c:>15.1f} ms" for c in cells))
    size = len(json.dumps(payload)) / mb
    cells = [
        best_ms(lambda s=s: redact_value(payload, s))
        for s in (secrets(n, rng) for n in (0, 10, 1000))
    ]
    print(f"{f'JSON {size:.1f} MB walk':<22}" + "".join(f"{c:>15.1f} ms" for c in cells))
    known = secrets(10, rng)
    processor = redact_processor(lambda: known)
    event = {"event": "connecting", "params": {"password": "x" * 12, "period": "WEEK"}, "n": 3}
    per_event = (
        best_ms(lambda: [processor(None, "info", dict(event)) for _ in range(10_000)]) / 10_000
    )
    print(f"log event (10 secrets): {per_event * 1000:.1f} µs")


if __name__ == "__main__":
    main()
