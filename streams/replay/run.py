"""Replay and backfill: re-run the raw topics over ``[T1, T2)`` through the shared batch step.

``bypass replay`` (CLI in :mod:`streams.cli.replay`) reads the raw topics with its own
reader (:mod:`streams.replay.reader`) and feeds the events, in processing order, to the
very batch step the live agents run (:mod:`streams.core.step`: same decoder, features/
engine, rule set, poison isolation).  Same events + same rule set -> same hits, with the
same ``hit_id`` s.

Selection by event time: events with ``ts`` in ``[T1 - warm-up, T2)`` are applied to the
state; only events with ``ts`` in ``[T1, T2)`` are evaluated and produce hits (the step's
``evaluate_from_ms``).  ``--warmup auto`` is the spec's longest window; features without
a window (all-time counts) can only be exact if the warm-up covers the whole history.
``in_list`` rules read the named lists through the live provider (Redis) as they are
*now*, not as they were at event time: a list changed since then changes those hits.

Order: the reader puts the partitions' records in the processing order of
:mod:`streams.core.order` (the merge by ``(event ts, topic, partition, offset)``), the
order the live entity agents hold their events back for.

Output, ``run_id`` and ``hit_id``: hit records are the live ``bypass.hits`` records with
``run_id`` set to the replay's run id (``--run-id`` or ``replay-<UTC time>-<random>``).
``hit_id`` is a function of (event id, rule id, rule-set version) only, so a replayed hit
has the live hit's id and the two can be joined on it.  ``--out`` picks the sink
(:mod:`streams.replay.outputs`).  ``risk_hits`` is a ReplacingMergeTree whose sort key
ends in ``hit_id``: a second run of the same replay adds no rows after ``FINAL``.  A
replay with the *same* rule-set version as live produces the same rows; the newest insert
wins, i.e. the replayed copy (identical but for ``run_id``) replaces the live one.  That
is what a backfill after an outage wants (``--run-id live``); for any other run id replay
warns first, with the number of live rows it would relabel.  ``--compare`` reads the live
side *before* writing anything and compares by (rule id, event id), which is stable
across rule-set versions.  Nothing is produced to ``bypass.hits``; a live backfill with
``--emit-blacklist`` produces its blacklist entries to ``bypass.blacklist`` (those not
expired yet), so the Redis mirror applies them (:class:`streams.replay.outputs.BlacklistEmitter`).

Dead letters: a malformed message, and an event whose processing raises (the live path
dead-letters exactly the same events: ``processing_error``), are counted and the replay
goes on; with ``--dlq`` they are also produced to the DLQ topic in the live format plus
a ``bypass.run_id`` header.

Checkpoints (:mod:`streams.replay.checkpoint`): ``--resume`` continues after Ctrl-C with
the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Producer as KafkaProducer

import features
import rules
from features import format_duration, format_ms, parse_duration_ms
from sinks.base import SinkBackpressureError
from streams.core.assembly import build_processor, load_for_spec, load_spec
from streams.core.deadletter import DeadLetter, invalid_message
from streams.core.envelope import InvalidEventError, decoder_from_settings
from streams.core.order import SourceEvent
from streams.core.processor import Processor
from streams.core.step import BatchStep, MemoryStore, StepResult
from streams.replay.archive import ArchiveReader
from streams.replay.checkpoint import TP, Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from streams.replay.compare import clickhouse_client, count_live_hits, read_bad_entities, read_live_hits
from streams.replay.options import (
    LIVE_RUN_ID,
    OUT_KINDS,
    SOURCES,
    ReplayError,
    ReplayOptions,
    ReplayStats,
    ReplaySummary,
    at_retention_edge,
    check_run_id,
    compare_hits,
    hit_element,
    new_run_id,
)
from streams.replay.outputs import BlacklistEmitter, ReplayOutput, open_output
from streams.replay.progress import Progress
from streams.replay.reader import Record, ReplayReader
from streams.settings import Settings

__all__ = ["Replay", "iter_hits_jsonl"]

log = logging.getLogger(__name__)

#: step attempts while a dependency does not answer (back-off 0.5 s doubling to 15 s: ~2 min)
DEPENDENCY_ATTEMPTS = 12


def _sha(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


class Replay:
    """One replay run. Build it, call :meth:`run`; :meth:`request_stop` (e.g. from a
    SIGINT handler) makes it finish the current chunk, checkpoint and return."""

    def __init__(
        self,
        settings: Settings,
        options: ReplayOptions,
        *,
        stdout: IO[bytes] | None = None,
        console: Any = None,
        on_chunk: Callable[[ReplayStats], None] | None = None,
        on_features: Callable[[str, str, SourceEvent, dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self._stdout = stdout
        self._console = console
        self._on_chunk = on_chunk  # called after each processed chunk (tests, embedding)
        #: called with every evaluated (event, entity) row's features (``bypass model dataset``)
        self._on_features = on_features
        self._stop = False
        self.warnings: list[str] = []

    # -- control ---------------------------------------------------------
    def request_stop(self) -> None:
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._console is not None:
            self._console.print(f"[yellow]warning:[/] {message}", highlight=False)
        else:
            log.warning(message)

    # -- setup -----------------------------------------------------------
    def _resolve(self) -> tuple[dict[str, Any], Checkpoint | None]:
        """Check the options and return the run parameters (from the checkpoint on --resume)."""
        o = self.options
        s = self.settings
        if o.out not in OUT_KINDS:
            raise ReplayError(f"--out {o.out!r}: choose one of {', '.join(OUT_KINDS)}", option="--out")
        if o.out_file is not None and o.out != "jsonl":
            raise ReplayError("--out-file only goes with --out jsonl", option="--out-file")
        if o.rules_file is not None and o.rules_version is not None:
            raise ReplayError("give either --rules FILE or --rules-version V, not both", option="--rules")
        if o.source not in SOURCES:
            raise ReplayError(f"--source {o.source!r}: choose one of {', '.join(SOURCES)}", option="--source")
        if o.emit_blacklist and o.run_id != LIVE_RUN_ID:
            raise ReplayError(
                "--emit-blacklist goes with --run-id live: only a backfill of the live labels may "
                "reach inline services (a backtest never does)",
                option="--emit-blacklist",
            )
        checkpoint: Checkpoint | None = None
        if o.resume:
            if not o.run_id:
                raise ReplayError(
                    "--resume needs --run-id: the id printed when the replay stopped "
                    f"(checkpoints are in {Path(s.state_dir) / 'replay'})",
                    option="--resume",
                )
            checkpoint = load_checkpoint(checkpoint_path(s.state_dir, o.run_id))
            if checkpoint.complete:
                raise ReplayError(
                    f"replay {o.run_id} already finished; nothing to resume (start a new run instead)",
                    run_id=o.run_id,
                )
            params = dict(checkpoint.params)
            for name, given in (("from_ms", o.from_ms), ("to_ms", o.to_ms)):
                if given is not None and given != params[name]:
                    flag = "--from" if name == "from_ms" else "--to"
                    raise ReplayError(
                        f"{flag} differs from the run being resumed ({format_ms(params[name])}); "
                        f"drop {flag} or start a new run",
                        option=flag,
                    )
            if o.topics and tuple(o.topics) != tuple(params["topics"]):
                raise ReplayError("--topics differs from the run being resumed", option="--topics")
            return params, checkpoint
        if o.from_ms is None or o.to_ms is None:
            raise ReplayError("--from and --to are required (unless --resume)", option="--from")
        if o.to_ms <= o.from_ms:
            raise ReplayError(
                f"--to ({format_ms(o.to_ms)}) must be after --from ({format_ms(o.from_ms)})",
                option="--to",
            )
        run_id = check_run_id(o.run_id) if o.run_id else new_run_id()
        params = {
            "run_id": run_id,
            "from_ms": o.from_ms,
            "to_ms": o.to_ms,
            "topics": list(o.topics or s.raw_topics),
            "warmup": o.warmup,
            "skew_ms": int(s.replay_skew_ms),
            "out": o.out,
            "out_file": str(o.out_file) if o.out_file else None,
            "compare": o.compare,
            "dlq": o.dlq,
            "emit_blacklist": o.emit_blacklist,
            "source": o.source,
            "rules_file": str(o.rules_file) if o.rules_file else None,
            "rules_version": o.rules_version,
            "chunk": int(s.replay_batch_size),
        }
        return params, None

    def _load_core(
        self, params: dict[str, Any], checkpoint: Checkpoint | None
    ) -> tuple[features.FeatureSpec, rules.RuleSet, Processor]:
        """spec, rule set and processor, assembled as the live worker assembles them."""
        s = self.settings
        spec, spec_sha = self._spec()
        if checkpoint is not None:
            rules_text = str(params["rules_text"])
            source = str(params.get("rules_source") or "checkpoint")
            if params.get("spec_sha") != spec_sha:
                raise ReplayError(
                    f"the feature spec (published, or {s.features_spec}) changed since replay "
                    f"{params['run_id']} started; "
                    "a resumed run must use the same spec: restore it or start a new run",
                    path=str(s.features_spec),
                )
        else:
            rules_text, source = self._rules_text(params)
            params["rules_text"] = rules_text
            params["rules_source"] = source
            params["spec_sha"] = spec_sha
        ruleset = load_for_spec(rules_text, spec, source=source)
        params["ruleset_version"] = str(ruleset.version)
        processor = build_processor(s, spec, ruleset, run_id=str(params["run_id"]))
        if params.get("out") != "clickhouse":  # only ClickHouse stores decision records
            processor.decision_sample = None
        return spec, ruleset, processor

    def _spec(self) -> tuple[features.FeatureSpec, str]:
        """The feature spec the live workers run (the active published version, else
        BYPASS_FEATURES_SPEC) and a digest of its text."""
        from features.errors import BypassError
        from streams.core.featurestore import active_spec

        s = self.settings
        try:
            active = active_spec(s)
        except BypassError as exc:
            if self.options.source != "archive":
                raise  # a Kafka replay cannot go on either: one clear error
            self._warn(
                f"cannot read the published feature specs ({exc.message}); replaying with "
                f"BYPASS_FEATURES_SPEC {s.features_spec}"
            )
            return load_spec(s), _sha(Path(s.features_spec).read_bytes())
        if active.record is None:
            return active.spec, _sha(Path(s.features_spec).read_bytes())
        return active.spec, _sha(active.record.text.encode())

    def _rules_text(self, params: dict[str, Any]) -> tuple[str, str]:
        """The rule-set YAML to replay with: --rules FILE, --rules-version V, or the latest."""
        from streams.core.rulestore import read_versions

        if params.get("rules_file"):
            path = Path(params["rules_file"])
            try:
                return path.read_text(encoding="utf-8"), str(path)
            except OSError as exc:
                raise ReplayError(f"cannot read --rules {path}: {exc.strerror}", path=str(path)) from None
        topic = self.settings.rules_topic
        wanted = params.get("rules_version")
        records = read_versions(self.settings)
        if not records:
            raise ReplayError(
                f"no rule set is published on {topic}: publish one with "
                "`bypass rules publish RULES.yaml` or give --rules FILE",
                topic=topic,
            )
        if wanted is None:
            record = records[-1]
            return record.text, f"{topic}@{record.version}"
        for record in reversed(records):
            if record.version == str(wanted):
                return record.text, f"{topic}@{record.version}"
        known = ", ".join(dict.fromkeys(r.version for r in records[-10:]))
        raise ReplayError(
            f"rule-set version {wanted!r} is not on {topic} (published there: {known})",
            version=wanted,
        )

    # -- run -------------------------------------------------------------
    def run(self) -> ReplaySummary:
        settings = self.settings
        params, checkpoint = self._resolve()
        run_id = str(params["run_id"])
        spec, _ruleset, processor = self._load_core(params, checkpoint)
        processor.observe = self._on_features
        unbounded: list[str] = []
        if checkpoint is None:
            warmup = params["warmup"]
            if str(warmup).strip().lower() == "auto":
                warmup_ms = int(spec.max_window_ms())
                unbounded = _unbounded_features(spec)  # warned about once we know older events exist
            else:
                warmup_ms = parse_duration_ms(str(warmup), allow_zero=True)
            params["warmup_ms"] = warmup_ms
        warmup_ms = int(params["warmup_ms"])
        from_ms, to_ms, skew_ms = int(params["from_ms"]), int(params["to_ms"]), int(params["skew_ms"])
        select_from = from_ms - warmup_ms
        stop_ms = to_ms + skew_ms
        topics = list(params["topics"])
        chunk_size = int(params.get("chunk") or settings.replay_batch_size)
        ckpt_path = checkpoint_path(Path(settings.state_dir), run_id)

        decoder = decoder_from_settings(settings)
        step = BatchStep(processor, evaluate_from_ms=from_ms)
        store = MemoryStore(settings.state_cache_keys)
        stats = ReplayStats.from_dict(checkpoint.stats) if checkpoint else ReplayStats()
        prior_elapsed = stats.elapsed_s
        if checkpoint is not None:
            store.restore(checkpoint.states)
        replayed: dict[str, set[str]] = {}
        if checkpoint is not None and checkpoint.replayed:
            replayed = {r: set(ids) for r, ids in checkpoint.replayed.items()}

        # the live side of --compare is read before anything is written
        live: dict[str, set[str]] | None = None
        if params.get("compare"):
            if checkpoint is not None and checkpoint.live is not None:
                live = {r: set(ids) for r, ids in checkpoint.live.items()}
            else:
                live = read_live_hits(settings, from_ms, to_ms, topics)

        if params["out"] == "clickhouse" and run_id != LIVE_RUN_ID and checkpoint is None:
            shared = count_live_hits(settings, from_ms, to_ms, topics, str(params["ruleset_version"]))
            if shared:
                self._warn(
                    f"{shared:,} live hits in the range were made by the same rule-set version "
                    f"{params['ruleset_version']}: risk_hits is keyed by hit_id, so the replayed copies "
                    f"(identical but for run_id) replace them and they will read run_id={run_id!r}. "
                    "For a backfill of the live labels use --run-id live"
                )

        reader: ReplayReader | ArchiveReader
        if params.get("source", "kafka") == "archive":
            reader = ArchiveReader(settings, topics, warn=self._warn)
        else:
            reader = ReplayReader(settings, topics, run_id, decoder, warn=self._warn)
        dlq_producer: KafkaProducer | None = None
        output: ReplayOutput | None = None
        emitter: BlacklistEmitter | None = None
        try:
            tps = reader.discover()
            reader.find_offsets(select_from - skew_ms, stop_ms)
            if checkpoint is None and reader.is_empty():
                raise ReplayError(
                    f"no data: the topics {', '.join(topics)} hold no messages at all "
                    f"(range {format_ms(from_ms)} .. {format_ms(to_ms)})",
                    topics=topics,
                )
            starts = dict(reader.starts)
            ends = dict(reader.ends)
            # events older than the warm-up exist when the time lookup skipped some offsets, or
            # (a broker whose lookup is coarse) when the replay reads some: warned about at the end
            skipped_older = any(starts[tp] > reader.marks[tp][0] for tp in tps)
            if checkpoint is not None:
                for tp in tps:
                    if tp not in checkpoint.positions:
                        raise ReplayError(
                            f"partition {tp[0]}[{tp[1]}] is not in the checkpoint (partitions were added?); "
                            "start a new run",
                        )
                starts = {tp: checkpoint.positions[tp] for tp in tps}
                ends = {tp: max(ends[tp], starts[tp]) for tp in tps}
            retention_edge = (
                {tp for tp in tps if at_retention_edge(starts[tp], reader.marks[tp][0])}
                if checkpoint is None
                else set()
            )
            positions: dict[TP, int] = dict(starts)
            output = self._open_output(params, checkpoint, run_id)
            if params.get("dlq"):
                from streams.core.kafka import producer

                dlq_producer = producer(settings)
            if params.get("emit_blacklist") and run_id == LIVE_RUN_ID:
                from streams.core.kafka import producer

                emitter = BlacklistEmitter(producer(settings), settings.blacklist_topic, run_id)

            progress = Progress(
                self._console if self.options.progress else None,
                total=sum(ends[tp] - starts[tp] for tp in tps),
                description=f"replay {run_id}",
            )
            t_start = time.monotonic()
            last_ckpt = t_start
            out = output

            prior_skipped = dict(stats.values_skipped)  # from the checkpoint, if resumed
            prior_emitted, prior_expired = stats.blacklist_emitted, stats.blacklist_expired

            def count_skipped() -> None:
                """Values the features skipped: the checkpoint's count plus this process's."""
                now_skipped = processor.engine.skipped_values()
                stats.values_skipped = {
                    name: prior_skipped.get(name, 0) + now_skipped.get(name, 0)
                    for name in sorted(prior_skipped.keys() | now_skipped.keys())
                }

            def save(complete: bool) -> None:
                out.flush()
                if emitter is not None:
                    emitter.flush()
                    stats.blacklist_emitted = prior_emitted + emitter.produced
                    stats.blacklist_expired = prior_expired + emitter.expired
                count_skipped()
                stats.elapsed_s = prior_elapsed + (time.monotonic() - t_start)
                ck = Checkpoint(
                    run_id=run_id,
                    params=params,
                    positions=dict(positions),
                    states={(entity, key): data for entity, key, data in store.snapshots()},
                    stats=stats.to_dict(),
                    replayed={r: sorted(ids) for r, ids in replayed.items()} if live is not None else None,
                    live={r: sorted(ids) for r, ids in live.items()} if live is not None else None,
                    out_bytes=out.position(),
                    complete=complete,
                    written_ms=int(time.time() * 1000),
                )
                save_checkpoint(ckpt_path, ck)

            def dead_letter(letter: DeadLetter) -> None:
                if dlq_producer is not None:
                    headers: list[tuple[str, str | bytes | None]] = [
                        *letter.headers,
                        ("bypass.run_id", run_id.encode()),
                    ]
                    dlq_producer.produce(
                        settings.dlq_topic, key=letter.key, value=letter.value, headers=headers
                    )
                    dlq_producer.poll(0)
                    stats.dlq_sent += 1

            def run_step(sources: list[SourceEvent]) -> StepResult:
                """The step, retried with back-off while a dependency (Redis lists) does not
                answer: after about two minutes the replay stops with its checkpoint."""
                delay = 0.5
                for attempt in range(DEPENDENCY_ATTEMPTS):
                    try:
                        return step.run(sources, store)
                    except SinkBackpressureError as exc:
                        if attempt == DEPENDENCY_ATTEMPTS - 1:
                            raise ReplayError(
                                f"{exc.message}; the replay stopped: run it again with --resume "
                                "(from its last checkpoint) once the dependency answers"
                            ) from exc
                        self._warn(f"{exc.message}; retrying in {delay:.1f} s")
                        time.sleep(delay)
                        delay = min(delay * 2, 15.0)
                raise AssertionError("unreachable")  # pragma: no cover

            def process(chunk: list[Record]) -> None:
                sources: list[SourceEvent] = []
                for rec in chunk:
                    stats.messages += 1
                    event = rec.event
                    if event is None:
                        stats.malformed += 1
                        reason = rec.reason or "invalid"
                        stats.malformed_by_reason[reason] = stats.malformed_by_reason.get(reason, 0) + 1
                        dead_letter(
                            invalid_message(
                                InvalidEventError(rec.message or "", reason=reason),
                                key=rec.key,
                                value=decoder.redact(rec.raw),
                                topic=rec.topic,
                                partition=rec.partition,
                                offset=rec.offset,
                                timestamp_ms=rec.timestamp_ms,
                                headers=rec.headers,
                            )
                        )
                        continue
                    ts = rec.ts_ms
                    if ts < select_from or ts >= to_ms:
                        stats.outside_range += 1
                        if ts < select_from:
                            stats.before_warmup += 1
                        continue
                    if ts >= from_ms:
                        stats.in_range_events += 1
                    else:
                        stats.warmup_events += 1
                    if stats.min_ts_ms is None or ts < stats.min_ts_ms:
                        stats.min_ts_ms = ts
                    if stats.max_ts_ms is None or ts > stats.max_ts_ms:
                        stats.max_ts_ms = ts
                    sources.append(SourceEvent(event, rec.topic, rec.partition, rec.offset, rec.timestamp_ms))
                result = run_step(sources)
                stats.applied += result.applied
                stats.duplicates += result.duplicates
                stats.late_rejected += len(result.late)
                stats.rule_errors += result.rule_errors
                stats.processing_errors += len(result.dead_letters)
                for letter in result.dead_letters:
                    dead_letter(letter)
                for hit in result.hits:
                    rule = hit.record["rule_id"]
                    stats.hits_by_rule[rule] = stats.hits_by_rule.get(rule, 0) + 1
                    if live is not None and hit.record["error"] is None:  # as the live side: no errors
                        r = hit.record
                        replayed.setdefault(rule, set()).add(
                            hit_element(r["event_id"], r["entity"], r["key"])
                        )
                    out.hit(hit)
                stats.hits += len(result.hits)
                stats.blacklist += len(result.blacklist)
                for entry in result.blacklist:
                    out.blacklist(entry)
                    if emitter is not None:
                        emitter.add(entry)
                if out.wants_decisions:
                    for made in result.decisions:
                        out.decision(made)
                for rec in chunk:
                    positions[(rec.topic, rec.partition)] = rec.offset + 1
                if self._on_chunk is not None:
                    self._on_chunk(stats)

            def evict() -> None:
                now_ms = reader.eviction_time()
                if now_ms is None:
                    return
                for entity in step.entities:
                    for key in store.keys(entity):
                        raw, state = store.peek(entity, key)  # not load(): that takes it from the cache
                        if raw is not None and step.evictable(entity, raw, state, now_ms):
                            store.delete(entity, key)

            with progress:
                chunks = reader.records(
                    positions,
                    stop_ms=stop_ms,
                    to_ms=to_ms,
                    skew_ms=skew_ms,
                    select_from_ms=select_from,
                    chunk_size=chunk_size,
                    retention_edge=retention_edge,
                    should_stop=lambda: self._stop,
                )
                for chunk in chunks:
                    if self._stop:
                        break
                    process(chunk)
                    progress.update(
                        sum(positions[tp] - starts[tp] for tp in tps),
                        stats.messages,
                        time.monotonic() - t_start,
                    )
                    now = time.monotonic()
                    if now - last_ckpt >= settings.replay_checkpoint_s:
                        evict()
                        save(False)
                        last_ckpt = now
            interrupted = not reader.finished
            if dlq_producer is not None:
                dlq_producer.flush(30)
            if interrupted:
                save(False)
            else:
                if unbounded and (skipped_older or stats.before_warmup):
                    # all-time features do not see the events before the warm-up
                    self._warn(
                        f"features without a window (all-time): {', '.join(unbounded)}; --warmup auto "
                        f"({format_duration(warmup_ms)}) covers the windowed ones only: these count "
                        "from T1 - warm-up, and the topics hold older events (give a longer --warmup "
                        "to cover more history)"
                    )
                out.flush()
                if emitter is not None:
                    emitter.flush()
                    stats.blacklist_emitted = prior_emitted + emitter.produced
                    stats.blacklist_expired = prior_expired + emitter.expired
                count_skipped()
                stats.elapsed_s = prior_elapsed + (time.monotonic() - t_start)
                if stats.in_range_events == 0:
                    seen = (
                        f"the events read span {format_ms(stats.min_ts_ms)} .. "
                        f"{format_ms(stats.max_ts_ms or 0)}"
                        if stats.min_ts_ms is not None
                        else f"no event at all was found around that range ({stats.messages} messages read)"
                    )
                    stamps = [w for w in self.warnings if "does not stamp" in w]
                    if stamps:
                        seen += f". {stamps[0]}"
                    save(True)
                    raise ReplayError(
                        f"no data: no event with event time in [{format_ms(from_ms)}, {format_ms(to_ms)}) on "
                        f"{', '.join(topics)}; {seen}",
                        topics=topics,
                    )
                save(True)
        finally:
            if output is not None:
                with contextlib.suppress(Exception):
                    output.close()
            with contextlib.suppress(Exception):
                reader.close()

        return ReplaySummary(
            run_id=run_id,
            from_ms=from_ms,
            to_ms=to_ms,
            warmup_ms=warmup_ms,
            topics=tuple(topics),
            partitions=len(tps),
            ruleset_version=str(params["ruleset_version"]),
            out=str(params["out"]),
            out_target=out.target,
            stats=stats,
            interrupted=interrupted,
            checkpoint=ckpt_path,
            warnings=list(self.warnings),
            compare=(
                compare_hits(live, replayed, read_bad_entities(settings, from_ms, to_ms))
                if live is not None and not interrupted
                else None
            ),
            blacklist_written=out.wants_blacklist,
        )

    def _open_output(
        self, params: dict[str, Any], checkpoint: Checkpoint | None, run_id: str
    ) -> ReplayOutput:
        out = params["out"]
        s = self.settings
        path = Path(params["out_file"]) if params.get("out_file") else None
        content = _sha(str(params["rules_text"]) + str(params["spec_sha"]))  # what decides the hits
        if out == "jsonl" and checkpoint is not None and path is None:
            self._warn("resuming a jsonl replay to stdout: only the hits after the checkpoint are written")
        return open_output(
            out,
            run_id=run_id,
            namespace=f"{params['ruleset_version']}|{content}",
            topics=list(params["topics"]),
            database=s.clickhouse_database,
            flush_rows=int(s.sink_batch_size),
            out_file=path,
            resume_at=checkpoint.out_bytes if checkpoint is not None else None,
            stdout=self._stdout,
            clickhouse=clickhouse_client(s) if out == "clickhouse" else None,
        )


def _unbounded_features(spec: features.FeatureSpec) -> list[str]:
    """Names of the all-time aggregates (no window). ``since`` and ``sequence`` are left
    out: a rule compares them with thresholds that a warm-up as long as the longest
    window covers."""
    return [f.name for f in spec.features if f.window_ms is None and f.agg not in ("since", "sequence")]


def iter_hits_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read back a ``--out jsonl`` file (for tests and tools)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)
