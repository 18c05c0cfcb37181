"""A local stand-in for the pipeline's external APIs, to run the example offline.

    python -m examples.weekly_report.sample_api --port 8765

Serves, on 127.0.0.1 (standard library only):

* ``GET /stats?serviceKey=...&startDate=YYYYMMDD&endDate=YYYYMMDD`` — a statistics API in
  the shape the default ``WEEKLY_STATS_FIELDS`` expects: ``{"items": [{"stat_key", "value"}]}``.
  A missing ``serviceKey`` answers 401.
* ``GET /v1/forecast`` and ``GET /v1/archive`` — Open-Meteo-compatible daily weather
  (``latitude``, ``longitude``, ``start_date``, ``end_date``, ``daily``).
* ``GET /getVilageFcst`` — a KMA short-term forecast answer (``dataType=JSON``).
* ``POST /hook`` — a webhook that prints what it receives (the failure alerts).

Values are deterministic functions of the place and the day, so tests can predict them.
"""

from __future__ import annotations

import argparse
import json
import threading
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "STAT_KEYS",
    "kma_payload",
    "open_meteo_payload",
    "serve",
    "stats_payload",
]

STAT_KEYS = ("PIG_PRICE_AVG", "PIG_HEAD_GRADED", "CATTLE_PRICE_AVG")


def _day(text: str) -> date:
    text = text.strip()
    return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else date.fromisoformat(text)


def stats_payload(start: date, end: date) -> dict[str, Any]:
    """The statistics of the week ``start``..``end``: three values derived from the date."""
    seed = start.toordinal() % 97
    values = (5000.0 + seed * 3.5, 30000.0 + seed * 11, 18000.0 + seed * 7.25)
    return {
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "items": [{"stat_key": k, "value": v} for k, v in zip(STAT_KEYS, values, strict=True)],
    }


def weather_values(lat: float, lon: float, day: date) -> dict[str, float]:
    """Deterministic daily weather for a place: cooler north, a weekly rain pattern."""
    base = 40.0 - lat + (day.toordinal() % 7) * 0.5
    return {
        "temperature_2m_mean": round(base, 1),
        "temperature_2m_max": round(base + 5.0, 1),
        "temperature_2m_min": round(base - 4.0, 1),
        "relative_humidity_2m_mean": round(60.0 + (lon % 1) * 20, 1),
        "precipitation_sum": round(float(day.toordinal() % 3) * 1.2, 1),
    }


def open_meteo_payload(lat: float, lon: float, start: date, end: date) -> dict[str, Any]:
    """An Open-Meteo ``daily`` answer for ``start``..``end`` (inclusive)."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    values = [weather_values(lat, lon, d) for d in days]
    daily: dict[str, list[Any]] = {"time": [d.isoformat() for d in days]}
    for name in values[0] if values else ():
        daily[name] = [v[name] for v in values]
    return {
        "latitude": lat,
        "longitude": lon,
        "timezone": "Asia/Seoul",
        "daily_units": {"time": "iso8601", "temperature_2m_mean": "°C", "precipitation_sum": "mm"},
        "daily": daily,
    }


def kma_payload(nx: int, ny: int, base_date: str, base_time: str, days: int = 3) -> dict[str, Any]:
    """A ``getVilageFcst`` answer: hourly TMP/REH/PCP and daily TMN/TMX for ``days`` days."""
    first = _day(base_date)
    items = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        values = weather_values(38.0 - (ny - 127) * 0.045, 127.0 + (nx - 60) * 0.057, day)
        stamp = day.strftime("%Y%m%d")

        def item(category: str, hour: int, value: Any, stamp: str = stamp) -> dict[str, Any]:
            return {
                "baseDate": base_date,
                "baseTime": base_time,
                "category": category,
                "fcstDate": stamp,
                "fcstTime": f"{hour:02d}00",
                "fcstValue": str(value),
                "nx": nx,
                "ny": ny,
            }

        for hour in range(0, 24, 3):
            items.append(item("TMP", hour, values["temperature_2m_mean"]))
            items.append(item("REH", hour, int(values["relative_humidity_2m_mean"])))
            rain = values["precipitation_sum"]
            items.append(item("PCP", hour, "강수없음" if rain == 0 else f"{rain}mm"))
        items.append(item("TMN", 6, values["temperature_2m_min"]))
        items.append(item("TMX", 15, values["temperature_2m_max"]))
    return {
        "response": {
            "header": {"resultCode": "00", "resultMsg": "NORMAL_SERVICE"},
            "body": {
                "dataType": "JSON",
                "items": {"item": items},
                "pageNo": 1,
                "numOfRows": len(items),
                "totalCount": len(items),
            },
        }
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "weekly-report-sample-api/1"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            if parts.path == "/stats":
                if not query.get("serviceKey"):
                    self._send(401, {"error": "serviceKey is required"})
                    return
                start = _day(query["startDate"])
                end = _day(query.get("endDate", (start + timedelta(days=6)).isoformat()))
                self._send(200, stats_payload(start, end))
            elif parts.path in ("/v1/forecast", "/v1/archive"):
                self._send(
                    200,
                    open_meteo_payload(
                        float(query["latitude"]),
                        float(query["longitude"]),
                        _day(query["start_date"]),
                        _day(query["end_date"]),
                    ),
                )
            elif parts.path == "/getVilageFcst":
                self._send(
                    200,
                    kma_payload(
                        int(query["nx"]), int(query["ny"]), query["base_date"], query["base_time"]
                    ),
                )
            else:
                self._send(404, {"error": f"no such endpoint {parts.path}"})
        except (KeyError, ValueError) as exc:
            self._send(400, {"error": True, "reason": f"bad request: {exc}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        if urlsplit(self.path).path != "/hook":
            self._send(404, {"error": "no such endpoint"})
            return
        try:
            text = json.loads(body).get("text", body)
        except ValueError:
            text = body
        print(f"\n[sample_api] webhook received:\n{text}\n", flush=True)
        self._send(200, {"ok": True})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the default handler logs every request (with its query, i.e. the key).
        pass


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the server in a daemon thread; returns (server, base URL). Stop: server.shutdown()."""
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="sample-api", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local stand-in for the weekly report's APIs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f"sample API on http://{args.host}:{server.server_address[1]} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
