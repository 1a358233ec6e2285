"""bench_features: the example feature spec over a synthetic stream, in-process on one core.

Workload: ``examples/features.yaml`` (9 user features + 1 device feature; the ``ip``
entity has none) over a deterministic stream spread over 30 days of event time, in
event-time order: logins with geo (mostly from the user's home city, sometimes
travelling), property views, orders with amounts, phone changes (a new hashed phone),
contract signs and failed logins; every event carries user, device, IP and a hashed
phone, as ingest produces them. About 100 events per user in the 30 days ("a typical
user" of the issue).

Measures, per (event, entity kind it carries) exactly as the live path and replay do:
``FeatureSpec.entity_keys`` + ``FeatureEngine.apply`` with the default cap, lateness and
dedup horizon. Reports events/s (input events; wall clock and per CPU second, which is the fairer
figure on a shared machine) and applies/s, then the serialized
state (``engine.dumps``) per user at the end of the stream: mean, p50, p90, max.
Goals: >= 50,000 events/s on one core; <= 2 KB of state per typical user.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import features

BUDGET_S = 60
QUICK_BUDGET_S = 30

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "examples" / "features.yaml"
T0 = 1_763_856_000_000
DAYS_MS = 30 * 86_400_000
CITIES = [
    ("Beijing", 39.90, 116.40),
    ("Shanghai", 31.23, 121.47),
    ("Guangzhou", 23.13, 113.26),
    ("Shenzhen", 22.54, 114.06),
    ("Chengdu", 30.57, 104.07),
    ("Hangzhou", 30.27, 120.16),
    ("Wuhan", 30.59, 114.31),
    ("Xi'an", 34.34, 108.94),
]
TYPES = [
    ("login", 35),
    ("property_view", 35),
    ("order", 12),
    ("login_failed", 8),
    ("contract_sign", 6),
    ("phone_change", 4),
]


def make_events(n_users: int, per_user: int = 100, seed: int = 11) -> list[dict[str, Any]]:
    """A deterministic stream: ``per_user`` events per user over 30 days, time-ordered."""
    rnd = random.Random(seed)
    names = [t for t, _ in TYPES]
    weights = [w for _, w in TYPES]
    users = []
    for u in range(n_users):
        home = rnd.randrange(len(CITIES))
        devices = [f"d{u}-{k}" for k in range(rnd.choice([1, 1, 2, 3]))]
        ips = [
            f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            for _ in range(rnd.choice([1, 2, 3, 4]))
        ]
        phone = f"ph_{rnd.getrandbits(128):032x}"
        users.append({"id": f"u{u:06d}", "home": home, "devices": devices, "phone": phone, "ips": ips})
    raw: list[tuple[int, int, str]] = []
    for u in range(n_users):
        for _ in range(per_user):
            raw.append((T0 + rnd.randrange(DAYS_MS), u, rnd.choices(names, weights)[0]))
    raw.sort()
    events: list[dict[str, Any]] = []
    for i, (ts, u, typ) in enumerate(raw):
        user = users[u]
        if typ == "phone_change":
            user["phone"] = f"ph_{rnd.getrandbits(128):032x}"
        ev: dict[str, Any] = {
            "event_id": f"{ts:x}-{i:08x}-{u:06x}-4b1d-8f00-0000",
            "type": typ,
            "ts": ts,
            "user_id": user["id"],
            "device_id": rnd.choice(user["devices"]),
            "ip": rnd.choice(user["ips"]),
            "phone": user["phone"],
        }
        if typ in ("login", "login_failed"):
            city = user["home"] if rnd.random() < 0.85 else rnd.randrange(len(CITIES))
            name, lat, lon = CITIES[city]
            ev["geo"] = {
                "lat": round(lat + rnd.uniform(-0.05, 0.05), 4),
                "lon": round(lon + rnd.uniform(-0.05, 0.05), 4),
                "city": name,
            }
        if typ == "order":
            ev["attrs"] = {"amount": round(rnd.uniform(5, 500), 2)}
        events.append(ev)
    return events


def run(quick: bool = False) -> list[dict[str, Any]]:
    spec = features.load_spec(SPEC_PATH)
    engine = features.FeatureEngine(spec)
    n_users = 400 if quick else 2000
    events = make_events(n_users)
    states: dict[tuple[str, str], features.EntityState] = {}
    entity_keys = spec.entity_keys
    apply = engine.apply
    new_state = engine.new_state
    applies = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for ev in events:
        for ent, key in entity_keys(ev):
            st = states.get((ent, key))
            if st is None:
                st = states[(ent, key)] = new_state(ent)
            apply(ent, st, ev)
            applies += 1
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    eps = len(events) / elapsed
    sizes = sorted(len(engine.dumps(st)) for (ent, _), st in states.items() if ent == "user")
    dev_sizes = [len(engine.dumps(st)) for (ent, _), st in states.items() if ent == "device"]
    t1 = time.perf_counter()
    blobs = [(k, engine.dumps(st)) for k, st in states.items() if k[0] == "user"]
    for (ent, _), blob in blobs:
        engine.loads(ent, blob)
    snap_s = time.perf_counter() - t1
    return [
        {
            "name": "features_events_per_s",
            "value": round(eps, 1),
            "unit": "events/s",
            "goal": ">= 50000",
            "note": f"{len(events)} events, {n_users} users, example spec, one thread",
        },
        {
            "name": "features_events_per_cpu_s",
            "value": round(len(events) / cpu, 1),
            "unit": "events/s",
            "goal": ">= 50000",
            "note": "per second of this process's CPU time (the machine may be shared)",
        },
        {
            "name": "features_applies_per_s",
            "value": round(applies / elapsed, 1),
            "unit": "applies/s",
            "note": "(event, entity kind) pairs: user, device and ip",
        },
        {
            "name": "state_bytes_per_user_mean",
            "value": round(statistics.fmean(sizes), 1),
            "unit": "B",
            "goal": "<= 2048",
            "note": f"~{len(events) // n_users} events in 30 days per user",
        },
        {"name": "state_bytes_per_user_p50", "value": float(sizes[len(sizes) // 2]), "unit": "B"},
        {"name": "state_bytes_per_user_p90", "value": float(sizes[int(len(sizes) * 0.9)]), "unit": "B"},
        {"name": "state_bytes_per_user_max", "value": float(sizes[-1]), "unit": "B"},
        {"name": "state_bytes_per_device_mean", "value": round(statistics.fmean(dev_sizes), 1), "unit": "B"},
        {
            "name": "snapshot_roundtrips_per_s",
            "value": round(len(blobs) / snap_s, 1),
            "unit": "users/s",
            "note": "dumps + loads of one user state",
        },
    ]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
