"""Runners of the diamond example: weekly statistics from a farm's sensor readings.

load -> (temperature_stats, humidity_alerts) -> report. Each returns JSON that Stepline
stores in batch_step_result; the join reads both branches' results from ``ctx.results``.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from stepline import StepContext

HERE = Path(__file__).parent


def load(ctx: StepContext) -> dict[str, Any]:
    path = HERE / ctx.args.get("path", "data/readings.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [
            {
                "farm_id": r["farm_id"],
                "measured_at": r["measured_at"],
                "temperature_c": float(r["temperature_c"]),
                "humidity_pct": float(r["humidity_pct"]),
            }
            for r in csv.DictReader(f)
        ]
    ctx.log.info("readings loaded", rows=len(rows), path=str(path))
    return {"rows": rows, "farms": sorted({r["farm_id"] for r in rows})}


def temperature_stats(ctx: StepContext) -> dict[str, Any]:
    by_farm: dict[str, list[float]] = defaultdict(list)
    for row in ctx.results["load"]["rows"]:
        by_farm[row["farm_id"]].append(row["temperature_c"])
    return {
        farm: {
            "min": min(values),
            "max": max(values),
            "mean": round(statistics.fmean(values), 2),
            "frost_hours": 3 * sum(1 for v in values if v <= 0.0),
        }
        for farm, values in sorted(by_farm.items())
    }


def humidity_alerts(ctx: StepContext) -> dict[str, Any]:
    threshold = float(ctx.params.get("humidity_threshold", 85))
    alerts: dict[str, list[str]] = defaultdict(list)
    for row in ctx.results["load"]["rows"]:
        if row["humidity_pct"] >= threshold:
            alerts[row["farm_id"]].append(row["measured_at"])
    return {"threshold": threshold, "alerts": dict(sorted(alerts.items()))}


def report(ctx: StepContext) -> dict[str, Any]:
    temperatures = ctx.results["temperature_stats"]
    humidity = ctx.results["humidity_alerts"]
    lines = {
        farm: {
            **stats,
            "humid_readings": len(humidity["alerts"].get(farm, [])),
        }
        for farm, stats in temperatures.items()
    }
    worst = max(lines, key=lambda farm: lines[farm]["humid_readings"])
    ctx.log.info("report built", farms=len(lines), most_humid=worst)
    return {"period": ctx.params.get("period", "WEEK"), "farms": lines, "most_humid": worst}
