"""bench_rules: features + rules together on one core, with 10 and with 170 rules.

Workload: a deterministic synthetic stream over ``examples/features.yaml`` (users,
devices, IPs; logins across cities, phone changes, property views, orders, contract
signs, failed logins), fed through ``features.FeatureEngine`` and a generated rule
set, in one thread, exactly as the live path and replay do per (event, entity):
``engine.apply`` then ``RuleSet.evaluate``. Generated rules carry no ``events``
filter, so every rule of the entity runs on every event (the worst case, and the
fair comparison with a system that evaluates every rule).

Compared with the nearest published figure: a Flink-based bypass risk system's
single-thread capacity, about 66,000 events/s with 10 rules and about 7,400 events/s
with 170 rules. Also reported: rules alone (features precomputed) and features alone,
so the split of the cost is visible.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import features
import rules

BUDGET_S = 150
QUICK_BUDGET_S = 60

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "examples" / "features.yaml"
FLINK = {10: 66_000.0, 170: 7_400.0}
T0 = 1_763_856_000_000
CITIES = [
    ("Beijing", 39.90, 116.40),
    ("Shanghai", 31.23, 121.47),
    ("Guangzhou", 23.13, 113.26),
    ("Shenzhen", 22.54, 114.06),
    ("Chengdu", 30.57, 104.07),
    ("Hangzhou", 30.27, 120.16),
]
TYPES = [
    ("login", 40),
    ("property_view", 25),
    ("order", 15),
    ("phone_change", 5),
    ("contract_sign", 5),
    ("login_failed", 10),
]


def make_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """A deterministic stream in event-time order."""
    rnd = random.Random(seed)
    users = max(200, n // 50)
    names = [t for t, _ in TYPES]
    weights = [w for _, w in TYPES]
    events: list[dict[str, Any]] = []
    ts = T0
    for i in range(n):
        ts += rnd.randint(0, 400)
        u = rnd.randrange(users)
        etype = rnd.choices(names, weights)[0]
        city, lat, lon = CITIES[(u + (i % 7 == 0) * rnd.randrange(6)) % len(CITIES)]
        ev: dict[str, Any] = {
            "event_id": f"e{i}",
            "type": etype,
            "ts": ts,
            "user_id": f"u{u}",
            "device_id": f"d{u // 3 if rnd.random() < 0.9 else rnd.randrange(users)}",
            "ip": f"10.{u % 200}.{rnd.randrange(4)}.1",
            "geo": {
                "lat": lat + rnd.uniform(-0.05, 0.05),
                "lon": lon + rnd.uniform(-0.05, 0.05),
                "city": city,
            },
        }
        if etype == "phone_change":
            ev["phone"] = f"h{rnd.randrange(users * 2)}"
        if etype == "order":
            ev["attrs"] = {"amount": round(rnd.uniform(5, 3000), 2)}
        events.append(ev)
    return events


def feature_quantiles(
    precomputed: list[tuple[dict[str, Any], str, str, dict[str, Any]]],
) -> dict[str, list[float]]:
    """Per feature, its sorted non-null numeric values over the stream (to pick thresholds)."""
    values: dict[str, list[float]] = {}
    for _ev, _entity, _key, feats in precomputed:
        for name, v in feats.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values.setdefault(name, []).append(v)
    return {name: sorted(vs) for name, vs in values.items()}


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 1.0
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


def make_ruleset(
    n_rules: int, schema: dict[str, dict[str, str]], quantiles: dict[str, list[float]], seed: int = 11
) -> str:
    """A rule set of ``n_rules`` rules over the spec.

    Each rule joins 1-3 conditions with and/or: comparisons against a threshold drawn
    between the 95th and 99.9th percentile of the feature over the stream (so hits are
    rare, as in production), arithmetic with coalesce, durations, event fields; some
    rules are grouped, shadow or partially rolled out.
    """
    rnd = random.Random(seed)
    entities = [e for e in schema if schema[e]]
    lines = [f'version: "bench-{n_rules}"', "decisions: {reject: 100, review: 50}", "rules:"]
    for i in range(n_rules):
        entity = "user" if rnd.random() < 0.7 or len(entities) == 1 else rnd.choice(entities)
        names = sorted(schema[entity])

        def cmp(names: list[str] = names, entity: str = entity) -> str:
            name = rnd.choice(names)
            shape = rnd.random()
            if name == "ms_since_phone_change":  # "recently": below a low percentile
                return f"{name} < {_quantile(quantiles.get(name, []), rnd.uniform(0.001, 0.05))}"
            if name == "change_then_sign_1h":
                return f"{name} > 0"
            threshold = round(_quantile(quantiles.get(name, []), rnd.uniform(0.95, 0.999)), 1)
            if shape < 0.15:
                return f"coalesce({name}, 0) * 2 > {threshold * 2}"
            if shape < 0.25 and entity == "user":
                city = rnd.choice(CITIES)[0]
                return f'event.geo.city in ["{city}"] and {name} >= {threshold}'
            return f"{name} {'>=' if shape < 0.3 else '>'} {threshold}"

        k = rnd.choice([1, 2, 2, 3])
        parts = [cmp() for _ in range(k)]
        when = " and ".join(parts) if rnd.random() < 0.8 else " or ".join(f"({p})" for p in parts)
        lines += [
            f"  - id: r{i:03d}",
            f"    entity: {entity}",
            f"    when: '{when}'",
            f"    score: {rnd.choice([10, 20, 30, 50, 80])}",
            f"    label: label_{i % 12}",
            f"    action: {rnd.choice(['none', 'review', 'blacklist'])}",
            "    ttl: 7d",
        ]
        if rnd.random() < 0.2:
            lines += [f"    group: g{i % 8}", f"    priority: {rnd.randint(0, 5)}"]
        if rnd.random() < 0.1:
            lines.append("    mode: shadow")
        if rnd.random() < 0.1:
            lines.append(f"    rollout: {rnd.choice([10, 50, 90])}")
    return "\n".join(lines) + "\n"


def _pin_one_core() -> None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
    except (AttributeError, OSError):  # not Linux: run unpinned
        pass


def _features_pass(
    spec: Any, events: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], str, str, dict[str, Any]]]:
    engine = features.FeatureEngine(spec)
    states: dict[tuple[str, str], Any] = {}
    out = []
    for ev in events:
        for entity, key in spec.entity_keys(ev):
            st = states.get((entity, key))
            if st is None:
                st = states[(entity, key)] = engine.new_state(entity)
            out.append((ev, entity, key, engine.apply(entity, st, ev).features))
    return out


def _combined(spec: Any, rs: rules.RuleSet | None, events: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds for features (+ rules) over the stream; hits counted."""
    engine = features.FeatureEngine(spec)
    states: dict[tuple[str, str], Any] = {}
    entity_keys = spec.entity_keys
    hits = 0
    start = time.process_time()
    for ev in events:
        for entity, key in entity_keys(ev):
            st = states.get((entity, key))
            if st is None:
                st = states[(entity, key)] = engine.new_state(entity)
            result = engine.apply(entity, st, ev)
            if rs is not None:
                hits += len(rs.evaluate(ev, entity, key, result.features).hits)
    return time.process_time() - start, hits


def run(quick: bool = False) -> list[dict[str, Any]]:
    _pin_one_core()
    spec = features.load_spec(str(SPEC_PATH))
    schema = spec.schema()
    n_events = 20_000 if quick else 100_000
    events = make_events(n_events)
    results: list[dict[str, Any]] = []

    seconds, _ = _combined(spec, None, events)
    results.append(
        {
            "name": "features_only_events_per_s",
            "value": round(n_events / seconds, 1),
            "unit": "events/s",
            "note": f"{n_events} events, example spec, one core",
        }
    )
    precomputed = _features_pass(spec, events)
    quantiles = feature_quantiles(precomputed)
    for n_rules in (10, 170):
        text = make_ruleset(n_rules, schema, quantiles)
        rs = rules.load_ruleset(text, schema, source=f"generated-{n_rules}")
        seconds, hits = _combined(spec, rs, events)
        rate = n_events / seconds
        results.append(
            {
                "name": f"features_plus_rules_events_per_s_{n_rules}_rules",
                "value": round(rate, 1),
                "unit": "events/s",
                "baseline_name": f"Flink-based bypass system, {n_rules} rules, single thread (published)",
                "baseline_value": FLINK[n_rules],
                "ratio": round(rate / FLINK[n_rules], 2),
                "note": f"{n_events} events, {len(precomputed)} (event, entity) evaluations, {hits} hits",
            }
        )
        start = time.process_time()
        for ev, entity, key, feats in precomputed:
            rs.evaluate(ev, entity, key, feats)
        rules_s = time.process_time() - start
        results.append(
            {
                "name": f"rules_only_evaluations_per_s_{n_rules}_rules",
                "value": round(len(precomputed) / rules_s, 1),
                "unit": "evaluations/s",
                "note": "RuleSet.evaluate per (event, entity) with features precomputed",
            }
        )
    return results


if __name__ == "__main__":
    for row in run():
        print(row)
