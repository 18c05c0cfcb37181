"""Server render time of the dashboard's heaviest pages, on SQLite.

    python bench/dashboard.py [--repeat 5]

D1: the instance page of a 200-step DAG (layered: 20 layers of 10 steps, each step fed by
two steps of the layer before), run to the end. D2: the instance page of a mapped step of
10,000 items (100 of them failed). Both through the whole app (HTTP over ASGI in process:
auth, store reads, layout, SVG, templates), with the live fragment that htmx polls. Prints
the median and the worst of ``--repeat`` renders after one warm-up. Target: < 1 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from stepline.settings import Secret

sys.path.insert(0, str(Path(__file__).parent))

from stepline.api import create_app
from stepline.core.definition import BatchDefinition, batch, step
from stepline.service import Stepline
from stepline.settings import Settings

W = "workloads:"
TOKEN = "bench-token-0123456789"


def dag_200() -> BatchDefinition:
    layers, width = 20, 10
    steps = []
    for layer in range(layers):
        for i in range(width):
            nxt = (
                [f"l{layer + 1}_{i}", f"l{layer + 1}_{(i + 3) % width}"]
                if layer + 1 < layers
                else []
            )
            steps.append(step(f"l{layer}_{i}", W + "noop", nxt))
    return batch("d1_dag200", steps)


def map_10k() -> BatchDefinition:
    return batch(
        "d2_map10k",
        [
            step("produce", W + "ten_thousand", ["each"]),
            step("each", W + "fail_some", map={"over": "produce", "concurrency": 64}),
        ],
    )


def measure(service: Stepline, path: str, repeat: int) -> list[float]:
    async def go() -> list[float]:
        transport = httpx.ASGITransport(app=create_app(service), client=("127.0.0.1", 1))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers, timeout=120
        ) as http:
            (await http.get(path)).raise_for_status()  # warm-up (templates compile)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = await http.get(path)
                times.append(time.perf_counter() - started)
                response.raise_for_status()
            return times

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(db=f"sqlite:///{tmp}/bench.db", api_token=Secret(TOKEN))
        with Stepline(settings) as service:
            for definition in (dag_200(), map_10k()):
                service.apply(definition)
                instance, _ = service.trigger(definition.name)
                started = time.perf_counter()
                final = service.run_instance(instance.id)
                ran = time.perf_counter() - started
                print(f"{definition.name}: instance {final.id} {final.status.value} in {ran:.1f}s")
                for page in ("", "/live"):
                    path = f"/ui/instances/{instance.id}{page}"
                    times = measure(service, path, args.repeat)
                    print(
                        f"  GET {path:28s} median {statistics.median(times) * 1000:7.1f} ms"
                        f"  worst {max(times) * 1000:7.1f} ms  (target < 1000 ms)"
                    )


if __name__ == "__main__":
    main()
