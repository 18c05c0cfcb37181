"""Instructions per step, for ``valgrind --tool=callgrind`` (deterministic on a busy machine).

    valgrind --tool=callgrind --callgrind-out-file=cg.0 python bench/instructions.py W1 0
    valgrind --tool=callgrind --callgrind-out-file=cg.8 python bench/instructions.py W1 8
    # (total of cg.8 - total of cg.0) / (8 * steps) = instructions per step

Both runs start the same way (imports, a store, two warm-up instances, eight instances
created before any runs); the second then runs ``count`` of them, so the difference is
what running them costs, as ``bench/overhead.py`` times it. W2's count varies by a few
percent from run to run with the size of the bursts of outcomes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from overhead import CLASSIC, _parse, fresh_store

from stepline.dispatchers.direct import DirectDispatcher
from stepline.engine.orchestrator import Orchestrator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", help="W1..W4, chain:N, fan:N or map:N")
    parser.add_argument("count", type=int, help="instances to run (0: set up only)")
    args = parser.parse_args()
    workload = CLASSIC.get(args.workload) or _parse(args.workload)
    store = fresh_store("sqlite")
    stored = store.apply(workload.make())
    made = max(args.count, 8)
    pairs = []
    for _ in range(2 + made):
        orchestrator = Orchestrator(store, DirectDispatcher(capacity=64, load=store.results_for))
        pairs.append((orchestrator, orchestrator.start(stored, {})))
    for orchestrator, instance in pairs[: 2 + args.count]:
        assert orchestrator.run(instance.id).status == "succeeded"
    for orchestrator, _ in pairs:
        orchestrator.close()
    store.dispose()
    print(f"{workload.name}: {workload.steps} steps per instance, ran {args.count}")


if __name__ == "__main__":
    main()
