"""The external baseline of bench_pipeline: a Quix Streams app doing a small risk job.

One stateful ``apply`` per user (the message key): 4 windowed features kept in the user's
state (RocksDB, with Quix's changelog topic), 3 threshold rules, each hit as a JSON record
to a topic; at-least-once (Quix's default). Far less than bypass does per event (one entity
kind, no repartition hop, no dedup or lateness, no DLQ, no decisions), on purpose: it says
where the ceiling of a Python stream processor on this broker is.

    python bench/quix_app.py --bootstrap HOST:PORT --topic RAW --hits HITS --group G \
        --state-dir DIR --expected N

Runs with any interpreter that has ``quixstreams`` (``pip install -e '.[bench]'``, or a
separate venv: see bench/README.md); imports nothing of bypass. Consumes RAW from the
beginning and, when N events went through the apply, prints one JSON line
``{"seconds", "cpu_seconds", "count", "hits"}`` (first event read -> N-th done) and exits.
The input topic must have ``retention.ms`` set at creation: Quix copies it to its changelog
topic and Tansu describes only the configs given at creation.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import orjson

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PHONE_WINDOW_MS = 30 * DAY_MS
CITY_WINDOW_MS = 7 * DAY_MS
ORDER_WINDOW_MS = HOUR_MS
FAILED_WINDOW_MS = HOUR_MS


def features(state: dict[str, Any], event: dict[str, Any]) -> dict[str, float]:
    """Update ``state`` (lists of [ts, value] per feature) with ``event``; the 4 features
    over the windows ending at the event's time, ``(ts - W, ts]``."""
    ts = int(event["ts"])
    kind = event.get("type")
    if kind == "phone_change":
        state["phones"].append(ts)
    elif kind == "login":
        city = (event.get("geo") or {}).get("city")
        if city:
            state["cities"].append([ts, city])
    elif kind == "order":
        state["orders"].append([ts, float((event.get("attrs") or {}).get("amount") or 0.0)])
    elif kind == "login_failed":
        state["failed"].append(ts)
    state["phones"] = [t for t in state["phones"] if t > ts - PHONE_WINDOW_MS]
    state["cities"] = [c for c in state["cities"] if c[0] > ts - CITY_WINDOW_MS]
    state["orders"] = [o for o in state["orders"] if o[0] > ts - ORDER_WINDOW_MS]
    state["failed"] = [t for t in state["failed"] if t > ts - FAILED_WINDOW_MS]
    return {
        "phone_changes_30d": len(state["phones"]),
        "login_cities_7d": len({c[1] for c in state["cities"]}),
        "order_amount_1h": sum(o[1] for o in state["orders"]),
        "failed_logins_1h": len(state["failed"]),
    }


def rules(event: dict[str, Any], values: dict[str, float]) -> list[tuple[str, int]]:
    """(rule id, score) of the 3 threshold rules that hit."""
    kind = event.get("type")
    hits = []
    if values["phone_changes_30d"] > 1:
        hits.append(("churn", 40))
    if kind == "login" and values["login_cities_7d"] > 1:
        hits.append(("cities", 30))
    if kind == "order" and values["order_amount_1h"] > 2000:
        hits.append(("big_orders", 50))
    return hits


def main() -> None:
    from quixstreams import Application, State

    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--hits", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--expected", type=int, required=True)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
        use_changelog_topics=True,
        loglevel="WARNING",
    )
    source = app.topic(args.topic, key_deserializer="str", value_deserializer="json")
    sink = app.topic(args.hits, key_serializer="str", value_serializer="json")
    clock: dict[str, Any] = {"first": None, "cpu": 0.0, "count": 0, "hits": 0}

    def apply(event: dict[str, Any], state: State) -> list[dict[str, Any]]:
        if clock["first"] is None:
            clock["first"] = time.perf_counter()
            clock["cpu"] = time.process_time()
        user = state.get("user") or {"phones": [], "cities": [], "orders": [], "failed": []}
        values = features(user, event)
        state.set("user", user)
        out = [
            {
                "hit_id": f"{event['event_id']}:{rule}",
                "rule_id": rule,
                "key": event["user_id"],
                "event_id": event["event_id"],
                "ts": event["ts"],
                "score": score,
                "features": values,
            }
            for rule, score in rules(event, values)
        ]
        clock["count"] += 1
        clock["hits"] += len(out)
        if clock["count"] >= args.expected:
            result = {
                "seconds": time.perf_counter() - clock["first"],
                "cpu_seconds": time.process_time() - clock["cpu"],
                "count": clock["count"],
                "hits": clock["hits"],
            }
            os.write(1, orjson.dumps(result) + b"\n")
            os._exit(0)
        return out

    sdf = app.dataframe(source)
    sdf = sdf.apply(apply, stateful=True, expand=True)
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
