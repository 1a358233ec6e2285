"""Synthetic traffic with ground truth: normal users plus four kinds of abuse.

``bypass simulate`` (see ``streams.cli.simulate``) drives this module; the logic here
is deterministic and testable without Kafka.

Determinism
    Everything random comes from ``random.Random`` instances seeded from ``seed`` (a
    string seed per concern, so adding a scenario does not reshuffle the others).
    Event times start at ``start_ms``; the clock is never read here (pacing, which
    needs the wall clock, takes it as an argument). The same :class:`SimConfig` gives
    the same events, byte for byte, and the same truth.

Time
    ``rate`` events per second of wall clock for ``duration_s`` seconds: exactly
    ``round(rate * duration_s)`` events. Event time runs ``time_scale`` times faster
    than the wall clock, so the traffic covers ``duration_s * time_scale`` seconds of
    event time (default scale 3600: one second of traffic is one hour of event time,
    a one-minute run spans 60 hours, enough for the 24 h and 7 d windows to fill and
    for slow scenarios such as phone-number churn to play out). The scale is a
    trade-off: the live pipeline re-keys events by device and ip through repartition
    topics, which can reorder events of different partitions by a fraction of a
    second of wall clock; that skew times the scale must stay inside the workers'
    allowed lateness (1 h by default), or device/ip events are rejected as late.
    Every scenario fits at its natural durations from a span of :data:`MIN_SPAN_MS`
    (24 h) up. A shorter span (at least an hour) is accepted but *compressed*: every
    scripted gap shrinks by span / 24 h, so, say, a resale buyer's far login may come
    faster than a plane and look like impossible travel; ``bypass simulate`` warns.

Traffic
    normal users
        A heavy-tailed activity level each; log in from a home neighbourhood, view
        properties, order (amounts in CNY), sign contracts after viewing, mistype a
        password now and then (``login_failed``), change phone number rarely, travel
        between cities at plausible speeds (at most :data:`PLANE_KMH` plus an hour),
        share a device within a household (2-3 users), and use shared carrier
        (CGNAT) IP addresses for part of their traffic. ~20% register during the run.
    account_resale (truth: the user)
        An account that never views a property: a few logins at home, 4-6 phone
        number changes within a day or so, a login from a city at least 800 km away
        (reached at a plausible speed) on a new device, a last phone change and a
        contract signed less than an hour after it.
    device_farm (truth: the device)
        One device registering and logging in 10-30 accounts (virtual-operator phone
        numbers, one or two IP addresses) within a couple of days.
    credential_stuffing (truth: the ip)
        One data-centre IP sending 40-150 ``login_failed`` events within minutes for
        distinct user ids (a third are real accounts, the rest do not exist); no
        device id, no geo.
    impossible_travel (truth: the user)
        An otherwise normal user who logs in from home and, 15-55 minutes later, from a
        city at least 2,000 km away, then orders from there (account take-over).

Evasive actors (``Mix.evasive``, 20% by default; ``"variant": "evasive"`` in the truth)
    A resale account that views one property before the churn; a low-and-slow stuffing
    campaign (25-40 accounts spread evenly over 8-12 hours). They are bad all the same:
    rules tuned to the plain pattern miss them, and recall says so.

Lookalikes (``Mix.lookalikes``, 4 per 1,000 users; ``Simulator.lookalikes``, not in the truth)
    Benign users built to look bad, alternately: a user who logs in through a VPN exit
    abroad 20-50 minutes after a login at home (fast and far, but no take-over), and a
    big family of 5-7 users sharing one device and home IP. Rules that flag them lose
    precision, as they would in production.

Failed logins are events of type ``login_failed`` (never ``login``), so login features
(cities, spread, speed) only see successful logins.
"""

from __future__ import annotations

import heapq
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from features import parse_duration_ms, parse_time_ms
from features.errors import ConfigError

__all__ = [
    "CITIES",
    "DEFAULT_START_MS",
    "HARD_MIN_SPAN_MS",
    "MIN_SPAN_MS",
    "SCENARIOS",
    "Mix",
    "SimConfig",
    "Simulator",
    "haversine_km",
    "pace",
    "parse_duration_s",
    "parse_mix",
    "parse_rate",
    "parse_start_ms",
]

DEFAULT_START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so a seed alone is reproducible
MIN_SPAN_MS: Final = 24 * 3_600_000  # scenarios at their natural durations
HARD_MIN_SPAN_MS: Final = 3_600_000  # below this, nothing sensible fits
HOUR_MS: Final = 3_600_000
MINUTE_MS: Final = 60_000
DAY_MS: Final = 24 * HOUR_MS
PLANE_KMH: Final = 600.0  # normal travel never beats this (plus an hour at each end)
EARTH_RADIUS_KM: Final = 6371.0

SCENARIOS: Final = ("account_resale", "credential_stuffing", "device_farm", "impossible_travel")

# name, lat, lon, weight as a home city (0: only ever a destination)
CITIES: Final[tuple[tuple[str, float, float, float], ...]] = (
    ("Beijing", 39.904, 116.407, 10),
    ("Shanghai", 31.230, 121.474, 10),
    ("Guangzhou", 23.129, 113.264, 7),
    ("Shenzhen", 22.543, 114.058, 7),
    ("Chengdu", 30.573, 104.066, 5),
    ("Hangzhou", 30.274, 120.155, 5),
    ("Wuhan", 30.593, 114.305, 4),
    ("Xi'an", 34.341, 108.940, 3),
    ("Nanjing", 32.060, 118.797, 3),
    ("Chongqing", 29.563, 106.551, 4),
    ("Tianjin", 39.343, 117.362, 3),
    ("Harbin", 45.803, 126.535, 2),
    ("Kunming", 24.880, 102.833, 2),
    ("Urumqi", 43.825, 87.617, 1),
    ("Sanya", 18.253, 109.512, 1),
    ("Lhasa", 29.652, 91.172, 0),
    ("Moscow", 55.756, 37.617, 0),
    ("London", 51.507, -0.128, 0),
    ("New York", 40.713, -74.006, 0),
    ("Sydney", -33.869, 151.209, 0),
    ("Dubai", 25.205, 55.270, 0),
    ("Singapore", 1.352, 103.820, 0),
)
_DOMESTIC: Final = tuple(i for i, c in enumerate(CITIES) if c[3] > 0 or c[0] == "Lhasa")
_HOME_WEIGHTS: Final = tuple(c[3] for c in CITIES)

_NORMAL_PREFIXES: Final = ("130", "131", "132", "135", "136", "138", "139", "150", "152", "158", "186", "188")
_VIRTUAL_PREFIXES: Final = ("170", "171")

# background event types of a registered normal user -> relative weight
_BACKGROUND_TYPES: Final = (
    ("property_view", 50.0),
    ("login", 22.0),
    ("order", 8.0),
    ("login_failed", 3.0),
    ("contract_sign", 1.5),
    ("phone_change", 0.4),
)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (R = 6371.0), the same formula features/ uses."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _city_km(a: int, b: int) -> float:
    return haversine_km(CITIES[a][1], CITIES[a][2], CITIES[b][1], CITIES[b][2])


def _travel_ms(km: float) -> int:
    """The least time a normal trip of ``km`` takes: flight at PLANE_KMH plus an hour."""
    return int(km / PLANE_KMH * HOUR_MS) + HOUR_MS


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Mix:
    """Bad actors per user of the population (``users``), each at least one.

    ``farms`` and ``stuffing`` are counts per user too: 0.0025 is one farm per 400 users.
    ``evasive`` is a probability per resale actor and per stuffing campaign; ``lookalikes``
    a count per user (rounded, may be 0). Neither changes how many bad entities there are.
    """

    resale: float = 0.01
    travel: float = 0.01
    farms: float = 0.0025
    stuffing: float = 0.002
    evasive: float = 0.2  # share of resale actors and stuffing campaigns that stay under the usual rules
    lookalikes: float = 0.004  # benign users who look bad (VPN exits abroad, big family devices), per user

    def counts(self, users: int) -> dict[str, int]:
        def n(fraction: float) -> int:
            return 0 if fraction <= 0 else max(1, round(users * fraction))

        return {
            "account_resale": n(self.resale),
            "impossible_travel": n(self.travel),
            "device_farm": n(self.farms),
            "credential_stuffing": n(self.stuffing),
        }


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``rate`` is events per wall-clock second."""

    users: int = 1000
    rate: float = 500.0
    duration_s: float = 60.0
    seed: int = 1
    start_ms: int = DEFAULT_START_MS
    time_scale: float = 3600.0
    mix: Mix = field(default_factory=Mix)

    @property
    def total_events(self) -> int:
        """Exactly how many events the run emits."""
        return round(self.rate * self.duration_s)

    @property
    def span_ms(self) -> int:
        """How much event time the run covers."""
        return round(self.duration_s * self.time_scale * 1000)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.span_ms

    def check(self) -> None:
        """Raise ConfigError naming the option when the configuration can not work."""
        if self.users < 20:
            raise ConfigError(f"--users must be at least 20, got {self.users}", option="--users")
        if self.rate <= 0:
            raise ConfigError(f"--rate must be positive, got {self.rate:g}", option="--rate")
        if self.duration_s <= 0:
            raise ConfigError(f"--duration must be positive, got {self.duration_s:g}", option="--duration")
        if self.time_scale <= 0:
            raise ConfigError(
                f"--time-scale must be positive, got {self.time_scale:g}", option="--time-scale"
            )
        if self.start_ms < 0:
            raise ConfigError("--start must not be before 1970", option="--start")
        if self.span_ms < HARD_MIN_SPAN_MS:
            need = math.ceil(MIN_SPAN_MS / 1000 / self.duration_s)
            raise ConfigError(
                f"the run covers {self.span_ms / MINUTE_MS:.1f} min of event time (duration x time scale); "
                f"it must cover at least an hour (24 h for realistic scenarios): use --time-scale {need}, "
                "or a longer --duration",
                option="--time-scale",
            )

    @property
    def compressed(self) -> bool:
        """True when the span is under MIN_SPAN_MS: scripted durations shrink to fit, less realistic."""
        return self.span_ms < MIN_SPAN_MS


# --------------------------------------------------------------------------- parsing

_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """A duration in the one grammar (``features.parse_duration_ms``: ``60s``, ``2m``,
    ``1h30m``, ``500ms``) -> seconds. A bare number is refused here: in the grammar it
    means milliseconds, which for a simulation length is almost surely a mistake."""
    value = str(text).strip()
    if value.isdigit():
        raise ConfigError(
            f"bad duration {text!r}: give a unit, e.g. {value}s (a bare number means milliseconds)",
            option="--duration",
        )
    try:
        return parse_duration_ms(value) / 1000
    except ConfigError as exc:
        raise ConfigError(f"--duration: {exc.message}", option="--duration") from None


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*$")


def parse_rate(text: str) -> float:
    """``"500"``, ``"500/s"``, ``"30000/m"`` -> events per second."""
    match = _RATE_RE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"bad rate {text!r}: use events per second, e.g. 500 or 500/s", option="--rate")
    return float(match.group(1)) / _UNIT_S[match.group(2) or "s"]


def parse_start_ms(text: str, *, span_ms: int = 0, now_ms: int | None = None) -> int:
    """A time in the one grammar of ``features.parse_time_ms`` (ISO 8601, epoch ms, and
    with ``now_ms`` given ``-1d``, ``yesterday`` ...), or ``now``.

    ``now`` means: the traffic *ends* at the current minute (start = now rounded down to
    the minute, minus ``span_ms``), so Kafka retention by timestamp and blacklist TTLs
    behave as in production. ``now_ms`` is the current time (the caller reads the clock).
    """
    value = str(text).strip()
    if value.lower() == "now":
        if now_ms is None:
            raise ConfigError("--start now needs the current time", option="--start")
        return now_ms - now_ms % MINUTE_MS - span_ms
    try:
        return parse_time_ms(value, now_ms=now_ms)
    except ConfigError as exc:
        raise ConfigError(f"bad --start: {exc.message}", option="--start") from None


def parse_mix(text: str) -> Mix:
    """``"resale=0.02,farms=0.005"`` -> a Mix (unnamed fields keep their defaults)."""
    values: dict[str, float] = {}
    names = {f for f in Mix.__dataclass_fields__}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ConfigError(
                f"bad --mix item {part!r}: use name=fraction with names {', '.join(sorted(names))}",
                option="--mix",
            )
        try:
            values[name] = float(number)
        except ValueError:
            raise ConfigError(f"bad --mix value in {part!r}: not a number", option="--mix") from None
        if values[name] < 0:
            raise ConfigError(f"bad --mix value in {part!r}: must not be negative", option="--mix")
    return Mix(**values)


# --------------------------------------------------------------------------- actors


@dataclass
class _User:
    uid: str
    home: int  # city index
    lat: float  # home neighbourhood
    lon: float
    phone: str
    device: str
    ip: str
    weight: float
    new: bool  # registers during the run
    registered: bool = False
    city: int = -1  # current city (-1: home)
    last_geo_ms: int = 0
    views: int = 0


@dataclass(frozen=True, order=True)
class _Planned:
    """A scripted event: sorted by time, then by script order (``seq``)."""

    ts: int
    seq: int
    event: dict[str, Any] = field(compare=False)


class Simulator:
    """Builds the population and the scripted scenarios of a config.

    ``truth`` is ready after construction; ``events()`` yields the events in time order
    (a fresh, identical stream on every call); ``scripted`` counts the scripted events.
    """

    def __init__(self, config: SimConfig) -> None:
        config.check()
        self.config = config
        self.counts = config.mix.counts(config.users)
        rng = self._rng("population")
        self._pool_ips = [self._ip(rng, 100) for _ in range(max(8, config.users // 40))]
        farm_sizes = [rng.randint(10, 30) for _ in range(self.counts["device_farm"])]
        bad_users = self.counts["account_resale"] + sum(farm_sizes)
        if bad_users > config.users // 2:
            raise ConfigError(
                f"the scenario mix needs {bad_users} bad accounts, more than half of --users {config.users}: "
                "raise --users or lower --mix",
                option="--mix",
            )
        all_ids = [f"u{i:06d}" for i in range(config.users)]
        rng.shuffle(all_ids)  # bad accounts are not recognisable by their ids
        n_normal = config.users - bad_users
        self.normal = self._normal_users(rng, sorted(all_ids[:n_normal]))
        uids = iter(all_ids[n_normal:])
        self._resale_ids = [next(uids) for _ in range(self.counts["account_resale"])]
        self._farm_ids = [[next(uids) for _ in range(size)] for size in farm_sizes]
        # below MIN_SPAN_MS every scripted duration shrinks by the same factor (see SimConfig.compressed)
        self._k = min(1.0, config.span_ms / MIN_SPAN_MS)
        self._minute = max(1, round(MINUTE_MS * self._k))
        self._hour = max(1, round(HOUR_MS * self._k))
        self._truth: list[dict[str, str]] = []
        self._lookalikes: list[dict[str, str]] = []
        self._plan: list[_Planned] = []
        self._script_resale(self._rng("resale"))
        self._script_farms(self._rng("farm"))
        self._script_stuffing(self._rng("stuffing"))
        self._script_travel(self._rng("travel"))
        self._script_lookalikes(self._rng("lookalike"))
        self._plan.sort()
        if len(self._plan) > config.total_events:
            raise ConfigError(
                f"the scenarios alone need {len(self._plan)} events but the run has only "
                f"{config.total_events} (rate x duration): raise --rate or --duration, or lower --users",
                option="--rate",
            )

    # -- helpers ------------------------------------------------------------

    def _rng(self, concern: str) -> random.Random:
        # not for security: reproducible synthetic data (string seeds hash with sha512, stable across runs)
        return random.Random(f"{self.config.seed}:{concern}")  # noqa: S311

    @staticmethod
    def _ip(rng: random.Random, first: int) -> str:
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    @staticmethod
    def _phone(rng: random.Random, prefixes: tuple[str, ...] = _NORMAL_PREFIXES) -> str:
        return f"+86{rng.choice(prefixes)}{rng.randint(0, 99_999_999):08d}"

    @staticmethod
    def _device(rng: random.Random) -> str:
        return f"d-{rng.getrandbits(48):012x}"

    def _normal_users(self, rng: random.Random, ids: list[str]) -> list[_User]:
        users: list[_User] = []
        for uid in ids:
            home = rng.choices(range(len(CITIES)), weights=_HOME_WEIGHTS)[0]
            _, clat, clon, _ = CITIES[home]
            user = _User(
                uid=uid,
                home=home,
                lat=round(clat + rng.uniform(-0.08, 0.08), 5),
                lon=round(clon + rng.uniform(-0.08, 0.08), 5),
                phone=self._phone(rng),
                device=self._device(rng),
                ip=self._ip(rng, rng.choice((36, 58, 59, 61, 101, 111, 112, 113, 114, 116, 117, 119))),
                weight=min(20.0, rng.paretovariate(1.5)),
                new=rng.random() < 0.2,
            )
            users.append(user)
        # households: ~15% of users share their device and home IP with 1-2 others
        i = 0
        while i < len(users) - 2:
            if rng.random() < 0.07:
                size = rng.randint(2, 3)
                head = users[i]
                for member in users[i + 1 : i + size]:
                    member.device, member.ip, member.home = head.device, head.ip, head.home
                    member.lat = round(head.lat + rng.uniform(-0.002, 0.002), 5)
                    member.lon = round(head.lon + rng.uniform(-0.002, 0.002), 5)
                i += size
            else:
                i += 1
        return users

    def _add(self, ts: int, event: dict[str, Any]) -> None:
        event["ts"] = ts
        self._plan.append(_Planned(ts, len(self._plan), event))

    def _anchor(self, rng: random.Random, length_ms: int) -> int:
        """A start time so that a script of ``length_ms`` fits in the run."""
        room = max(0, self.config.span_ms - length_ms - 1)
        return self.config.start_ms + rng.randint(0, room)

    @staticmethod
    def _geo(
        rng: random.Random, city: int, lat: float | None = None, lon: float | None = None
    ) -> dict[str, Any]:
        name, clat, clon, _ = CITIES[city]
        if lat is None or lon is None:
            lat, lon = clat + rng.uniform(-0.03, 0.03), clon + rng.uniform(-0.03, 0.03)
        else:
            lat, lon = lat + rng.uniform(-0.003, 0.003), lon + rng.uniform(-0.003, 0.003)
        return {"lat": round(lat, 5), "lon": round(lon, 5), "city": name}

    def _horizon(self) -> int:
        return min(self.config.span_ms, 7 * DAY_MS)

    # -- scenarios ----------------------------------------------------------

    def _script_resale(self, rng: random.Random) -> None:
        h = self._horizon()
        for uid in self._resale_ids:
            home = rng.choices(range(len(CITIES)), weights=_HOME_WEIGHTS)[0]
            far = rng.choice([c for c in _DOMESTIC if _city_km(home, c) >= 800])
            lat, lon = CITIES[home][1], CITIES[home][2]
            phone = self._phone(rng)
            own = {"user_id": uid, "device_id": self._device(rng), "ip": self._ip(rng, 120)}
            steps: list[tuple[int, dict[str, Any]]] = []  # (offset from the anchor, event) in script order
            t = 0
            geo = self._geo(rng, home, lat, lon)
            steps.append((t, _ev("login", own, geo, phone=phone, attrs={"method": "sms"})))
            evasive = rng.random() < self.config.mix.evasive
            if evasive:  # one property view, so "never viewed a property" does not hold
                geo = self._geo(rng, home, lat, lon)
                view = _ev("property_view", own, geo, attrs={"property_id": _property(rng)})
                steps.append((rng.randint(2, 30) * self._minute, view))
            t += int(rng.uniform(0.02, 0.05) * h)
            geo = self._geo(rng, home, lat, lon)
            steps.append((t, _ev("login", own, geo, phone=phone, attrs={"method": "password"})))
            churn_start = t + int(0.02 * h)
            for offset in sorted(rng.uniform(0.0, 0.25) * h for _ in range(rng.randint(4, 6))):
                phone = self._phone(rng)
                geo = self._geo(rng, home, lat, lon)
                steps.append((churn_start + int(offset), _ev("phone_change", own, geo, phone=phone)))
            t = max(o for o, _ in steps)
            t += max(int(_travel_ms(_city_km(home, far)) * self._k), int(rng.uniform(0.03, 0.08) * h))
            buyer = {"user_id": uid, "device_id": self._device(rng), "ip": self._ip(rng, 121)}
            steps.append((t, _ev("login", buyer, self._geo(rng, far), phone=phone, attrs={"method": "sms"})))
            t += rng.randint(5, 30) * self._minute
            phone = self._phone(rng)
            steps.append((t, _ev("phone_change", buyer, self._geo(rng, far), phone=phone)))
            t += rng.randint(10, 50) * self._minute
            contract = {"contract_id": f"c-{rng.getrandbits(32):08x}"}
            steps.append((t, _ev("contract_sign", buyer, self._geo(rng, far), phone=phone, attrs=contract)))
            anchor = self._anchor(rng, t)
            for offset, event in steps:
                self._add(anchor + offset, event)
            self._bad("user", uid, "account_resale", evasive)

    def _script_farms(self, rng: random.Random) -> None:
        h = self._horizon()
        for accounts in self._farm_ids:
            device = self._device(rng)
            city = rng.choice(_DOMESTIC)
            lat = CITIES[city][1] + rng.uniform(-0.05, 0.05)
            lon = CITIES[city][2] + rng.uniform(-0.05, 0.05)
            ips = [self._ip(rng, 122) for _ in range(rng.randint(1, 2))]
            window = int(rng.uniform(0.1, 0.4) * h)
            anchor = self._anchor(rng, window + self._hour)
            for uid in accounts:
                phone = self._phone(rng, _VIRTUAL_PREFIXES)
                t = anchor + rng.randint(0, window)
                own = {"user_id": uid, "device_id": device, "ip": rng.choice(ips)}
                geo = self._geo(rng, city, lat, lon)
                self._add(t, _ev("register", own, geo, phone=phone, attrs={"channel": "app"}))
                t += rng.randint(1, 20) * self._minute
                geo = self._geo(rng, city, lat, lon)
                self._add(t, _ev("login", own, geo, phone=phone, attrs={"method": "sms"}))
                if rng.random() < 0.5:
                    t += rng.randint(1, 20) * self._minute
                    geo = self._geo(rng, city, lat, lon)
                    self._add(t, _ev("property_view", own, geo, attrs={"property_id": _property(rng)}))
            self._bad("device", device, "device_farm", False)

    def _script_stuffing(self, rng: random.Random) -> None:
        users = self.config.users
        for _ in range(self.counts["credential_stuffing"]):
            ip = self._ip(rng, 185)
            evasive = rng.random() < self.config.mix.evasive
            if evasive:  # low and slow: 25-40 accounts over 8-12 hours, a few per hour
                attempts = rng.randint(25, 40)
                length = rng.randint(8, 12) * self._hour
            else:
                attempts = rng.randint(40, 150)
                length = rng.randint(5, 40) * self._minute
            anchor = self._anchor(rng, length)
            targets: set[str] = set()
            while len(targets) < attempts:
                if rng.random() < 1 / 3:
                    targets.add(rng.choice(self.normal).uid)
                else:
                    targets.add(f"u{rng.randint(users, 10 * users + 1000):06d}")
            if evasive:  # evenly spread, so no hour holds a burst
                spacing = length / attempts
                times = [int((i + rng.uniform(0.1, 0.9)) * spacing) for i in range(attempts)]
            else:
                times = sorted(rng.randint(0, length) for _ in range(attempts))
            for t, uid in zip(times, sorted(targets), strict=True):
                reason = "bad_password" if int(uid[1:]) < users else "no_such_user"
                event = {"type": "login_failed", "user_id": uid, "ip": ip, "attrs": {"reason": reason}}
                self._add(anchor + t, event)
            self._bad("ip", ip, "credential_stuffing", evasive)

    def _script_travel(self, rng: random.Random) -> None:
        taken: set[str] = set()
        candidates = [u for u in self.normal if not u.new]
        for _ in range(min(self.counts["impossible_travel"], len(candidates))):
            user = rng.choice([u for u in candidates if u.uid not in taken])
            taken.add(user.uid)
            far = rng.choice([c for c in range(len(CITIES)) if _city_km(user.home, c) >= 2000])
            anchor = self._anchor(rng, 2 * self._hour)
            home = {"user_id": user.uid, "device_id": user.device, "ip": user.ip}
            geo = self._geo(rng, user.home, user.lat, user.lon)
            self._add(anchor, _ev("login", home, geo, phone=user.phone, attrs={"method": "password"}))
            t = anchor + rng.randint(15, 55) * self._minute
            there = {**home, "ip": self._ip(rng, 203)}
            self._add(t, _ev("login", there, self._geo(rng, far), attrs={"method": "password"}))
            t += rng.randint(2, 15) * self._minute
            order = {"amount": round(rng.uniform(2_000, 20_000), 2), "currency": "CNY"}
            self._add(t, _ev("order", there, self._geo(rng, far), attrs=order))
            self._bad("user", user.uid, "impossible_travel", False)

    def _bad(self, entity: str, key: str, scenario: str, evasive: bool) -> None:
        variant = "evasive" if evasive else "plain"
        self._truth.append({"entity": entity, "key": key, "scenario": scenario, "variant": variant})

    def _script_lookalikes(self, rng: random.Random) -> None:
        """Benign users who look bad, alternately: a VPN exit abroad, a big family on one device."""
        busy = {t["key"] for t in self._truth if t["entity"] == "user"}
        shared = Counter(u.device for u in self.normal)
        for i in range(round(self.config.users * self.config.mix.lookalikes)):
            if i % 2 == 0:
                candidates = [u for u in self.normal if not u.new and u.uid not in busy]
                if not candidates:
                    continue
                user = rng.choice(candidates)
                busy.add(user.uid)
                exit_city = rng.choice([c for c in range(len(CITIES)) if c not in _DOMESTIC])
                anchor = self._anchor(rng, 2 * self._hour)
                home = {"user_id": user.uid, "device_id": user.device, "ip": user.ip}
                geo = self._geo(rng, user.home, user.lat, user.lon)
                self._add(anchor, _ev("login", home, geo, attrs={"method": "password"}))
                vpn = {**home, "ip": self._ip(rng, 45)}
                t = anchor + rng.randint(20, 50) * self._minute
                self._add(t, _ev("login", vpn, self._geo(rng, exit_city), attrs={"method": "password"}))
                self._lookalikes.append({"entity": "user", "key": user.uid, "kind": "vpn_exit_abroad"})
            else:
                singles = [u for u in self.normal if shared[u.device] == 1 and u.uid not in busy]
                size = rng.randint(5, 7)
                if len(singles) < size:
                    continue
                members = rng.sample(singles, size)
                head = members[0]
                for member in members[1:]:
                    member.device, member.ip, member.home = head.device, head.ip, head.home
                    member.lat = round(head.lat + rng.uniform(-0.002, 0.002), 5)
                    member.lon = round(head.lon + rng.uniform(-0.002, 0.002), 5)
                shared[head.device] = size
                busy.update(m.uid for m in members)
                self._lookalikes.append({"entity": "device", "key": head.device, "kind": "big_family_device"})

    # -- output -------------------------------------------------------------

    @property
    def truth(self) -> list[dict[str, str]]:
        """One entry per bad entity: ``{"entity", "key", "scenario", "variant"}``, sorted.

        ``variant`` is ``evasive`` for actors built to stay under the usual thresholds,
        else ``plain``.
        """
        return sorted(self._truth, key=lambda t: (t["scenario"], t["entity"], t["key"]))

    @property
    def lookalikes(self) -> list[dict[str, str]]:
        """Benign entities built to look bad: ``{"entity", "key", "kind"}``, sorted (not in truth)."""
        return sorted(self._lookalikes, key=lambda t: (t["kind"], t["entity"], t["key"]))

    @property
    def scripted(self) -> int:
        return len(self._plan)

    def events(self) -> Iterator[dict[str, Any]]:
        """All ``total_events`` events in time order, with ids ``sim<seed>-<n>``."""
        cfg = self.config
        background = cfg.total_events - len(self._plan)
        bg = self._background(self._rng("background"), background)
        scripted = ((p.ts, 0, p.event) for p in self._plan)
        prefix = f"sim{cfg.seed}-"
        for n, (ts, _, body) in enumerate(heapq.merge(bg, scripted, key=lambda item: (item[0], item[1]))):
            # key order of the envelope: id, type, ts, user first (readable jsonl)
            event = {
                "event_id": f"{prefix}{n:08d}",
                "type": body["type"],
                "ts": ts,
                "user_id": body["user_id"],
            }
            for name in ("device_id", "ip", "phone", "geo", "attrs"):
                if name in body:
                    event[name] = body[name]
            yield event

    def _background(self, rng: random.Random, n: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``n`` normal-user events, stratified over the span (exact count, sorted times)."""
        cfg = self.config
        users = [self._fresh(u) for u in self.normal]
        cum: list[float] = []
        total = 0.0
        for u in users:
            total += u.weight
            cum.append(total)
        kinds = [k for k, _ in _BACKGROUND_TYPES]
        kind_weights = [w for _, w in _BACKGROUND_TYPES]
        step = cfg.span_ms / n if n else 0.0
        for i in range(n):
            ts = cfg.start_ms + int((i + rng.random()) * step)
            user = users[min(len(users) - 1, _bisect(cum, rng.random() * total))]
            yield ts, 1, self._normal_event(rng, user, ts, kinds, kind_weights)

    @staticmethod
    def _fresh(user: _User) -> _User:
        # per-stream copy: events() may be called more than once and must repeat itself
        return _User(
            **{**user.__dict__, "registered": not user.new, "city": -1, "last_geo_ms": 0, "views": 0}
        )

    def _normal_event(
        self, rng: random.Random, user: _User, ts: int, kinds: list[str], weights: list[float]
    ) -> dict[str, Any]:
        common: dict[str, Any] = {"user_id": user.uid, "device_id": user.device}
        if not user.registered:
            user.registered = True
            user.last_geo_ms = ts
            geo = self._geo(rng, user.home, user.lat, user.lon)
            return _ev("register", {**common, "ip": user.ip}, geo, phone=user.phone, attrs={"channel": "app"})
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "contract_sign" and user.views == 0:
            kind = "property_view"
        if kind == "login" and rng.random() < 0.05:
            self._maybe_travel(rng, user, ts)
        away = user.city >= 0
        city = user.city if away else user.home
        geo = self._geo(rng, city) if away else self._geo(rng, city, user.lat, user.lon)
        user.last_geo_ms = ts
        ip = rng.choice(self._pool_ips) if away or rng.random() < 0.2 else user.ip
        event: dict[str, Any] = {"type": kind, **common, "ip": ip, "geo": geo}
        if kind == "login":
            if rng.random() < 0.005:  # a new handset
                user.device = self._device(rng)
                event["device_id"] = user.device
            method = rng.choice(("password", "sms"))
            if method == "sms":
                event["phone"] = user.phone
            event["attrs"] = {"method": method}
        elif kind == "property_view":
            user.views += 1
            event["attrs"] = {"property_id": _property(rng)}
        elif kind == "order":
            event["attrs"] = {
                "amount": round(min(50_000.0, rng.lognormvariate(5.3, 0.9)), 2),
                "currency": "CNY",
            }
        elif kind == "login_failed":
            event["attrs"] = {"reason": "bad_password"}
        elif kind == "contract_sign":
            event["phone"] = user.phone
            event["attrs"] = {"contract_id": f"c-{rng.getrandbits(32):08x}"}
        elif kind == "phone_change":
            user.phone = self._phone(rng)
            event["phone"] = user.phone
        return event

    @staticmethod
    def _maybe_travel(rng: random.Random, user: _User, ts: int) -> None:
        """Go to another city (or back home) if a plane could have made it since the last event."""
        here = user.city if user.city >= 0 else user.home
        if user.city >= 0 and rng.random() < 0.5:
            target = user.home
        else:
            target = rng.choice([c for c in _DOMESTIC if c not in (here, user.home)])
        if ts - user.last_geo_ms >= _travel_ms(_city_km(here, target)):
            user.city = -1 if target == user.home else target


def _ev(kind: str, who: dict[str, Any], geo: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": kind, **who, "geo": geo, **extra}


def _property(rng: random.Random) -> str:
    return f"p-{rng.randint(1, 50_000)}"


def _bisect(cum: list[float], x: float) -> int:
    lo, hi = 0, len(cum)
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------- pacing


def pace(
    events: Iterable[dict[str, Any]],
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Yield events no faster than ``rate`` per second of ``clock`` (event times untouched)."""
    t0 = clock()
    for i, event in enumerate(events):
        ahead = t0 + i / rate - clock()
        if ahead > 0.002:
            sleep(ahead)
        yield event


def type_counts(events: Iterable[dict[str, Any]]) -> Counter[str]:
    """Events per type (for summaries and tests)."""
    return Counter(e["type"] for e in events)
