"""``bypass status --all``: worker reports and the on-call screen (pure parts)."""

from __future__ import annotations

from streams.core.overview import Overview, render
from streams.core.workers import WorkerReport


def _worker(wid: str, code: int = 200, **health: object) -> WorkerReport:
    body = {
        "status": "ok" if code == 200 else "degraded",
        "partitions_assigned": 4,
        "events_in": 12_345,
        "events_per_s": 410.5,
        "event_time_lag_s": 3.2,
        "consumer_lag": {"bypass.events[0]": 0, "bypass.events[1]": 1_500},
        "dependency": {"waiting": code != 200, "entity": "device", "waiting_s": 75.0},
        **health,
    }
    return WorkerReport(wid, "h", 1, 0, 0, "v7", "bypass", "worker", code, body)


def test_a_report_round_trips_and_old_reports_read_as_workers() -> None:
    report = _worker("h:1:ab")
    assert WorkerReport.from_bytes(report.to_bytes()) == report
    old = (
        b'{"worker_id": "h:2:cd", "host": "h", "pid": 2, "started_ms": 1, "updated_ms": 2, '
        b'"app_id": "bypass"}'
    )  # written before reports had kind, code and health
    back = WorkerReport.from_bytes(old)
    assert (back.kind, back.code, back.health, back.ruleset_version) == ("worker", 0, None, None)


def test_the_screen_names_every_worker_writer_dependency_and_dead_letter_reason() -> None:
    sink = WorkerReport(
        "h:3:ef", "h", 3, 0, 0, None, "bypass", "sink-clickhouse", 200, {"written": 99, "lag": 7}
    )
    view = Overview(
        [
            _worker("h:1:ab", features={"version": "f2", "warming": []}),
            _worker(
                "h:2:cd",
                code=503,
                features={
                    "version": "f3",
                    "warming": [{"entity": "user", "features": ["logins_7d"], "progress": 0.5}],
                },
            ),
            sink,
        ],
        {"kafka": None, "clickhouse": None, "redis": "cannot reach Redis at redis://h:6379/0: refused"},
        {"not_json": 3, "ts_out_of_bounds": 1},
        problems=["redis: cannot reach Redis", "worker h:2:cd: degraded"],
    )
    text = render(view)
    assert text.startswith("bypass: NOT healthy")
    assert "workers (2)" in text and "writers (1)" in text
    assert "h:1:ab  ok  rules v7  features f2  partitions 4  events 12,345 (410.5/s)  lag 1500" in text
    assert "h:2:cd  degraded  rules v7  features f3 (warming user: logins_7d 50%)  partitions 4" in text
    assert "lag by partition: bypass.events[1] 1,500" in text
    assert "WAITING for device 75.0 s" in text
    assert "sink-clickhouse  h:3:ef  written 99  lag 7" in text
    assert "redis      NOT reachable" in text and "clickhouse reachable" in text
    assert "dead letters in the last hour: not_json 3, ts_out_of_bounds 1" in text
    assert not view.healthy and view.as_dict()["dependencies"]["kafka"] == "ok"
