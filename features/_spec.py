"""The feature spec: a frozen, validated model of ``features.yaml``.

``FeatureSpec.from_dict`` validates an already-parsed mapping (pure, no I/O);
``load_spec`` is the one edge helper that also accepts YAML/JSON text or a path
(it imports PyYAML lazily, only when given YAML, so the rest of ``features``
stays stdlib + orjson).

Nothing here is specific to one aggregation: each aggregation describes itself on its
class in ``_aggs`` (name, accepted keys, value type, own checks), and this module reads
that registry (``LOGICS``). It validates the keys every feature has (``name``,
``entity``, ``agg``, ``where``) and parses each parameter key the same way whichever
aggregation takes it: ``field`` a dotted path, ``window`` and ``within`` durations in the
one grammar of ``features._time``, ``steps`` a non-empty list of event types.

A spec may declare its event types (top-level ``events: [login, order, ...]``). Then a
``where: {type: ...}`` or a sequence step naming another type is a SpecError with a
"did you mean", and rule validation rejects a rule whose ``events:`` names one
(``FeatureSpec.events``). A spec without ``events:`` accepts any type.

A spec may declare models (top-level ``models: [{name, file, entity}]``, tree ensembles of
``features._model``): each is scored over the features of its entity kind and read by rules
as ``model.<name>``. ``from_dict`` takes the parsed model files (``models=``, keyed by the
``file`` text as written); ``load_spec`` reads them, relative to the spec's folder. A model
file that is missing, invalid, made for another entity kind, or that reads a feature the
spec does not define for that entity is a SpecError naming the model (and the feature,
with a "did you mean").
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from features._aggs import LOGICS, SpecErr
from features._model import TreeModel, load_model
from features._paths import Getter, Where, make_getter
from features._time import parse_duration_ms
from features.errors import DurationError, ModelError, SpecError

#: The aggregations built in (sorted); a snapshot of the registry when ``features`` is
#: imported. ``features._aggs.LOGICS`` is the live registry.
AGGS: tuple[str, ...] = tuple(sorted(LOGICS))

_COMMON_KEYS = frozenset({"name", "entity", "agg", "where"})
_TOP_KEYS = ("entities", "events", "features", "models", "version")
_MODEL_KEYS = ("name", "file", "entity")
#: the prefix rules read a model's score under (``model.<name>``), also its key in the features
MODEL_PREFIX = "model."
#: the envelope field holding the event type (what ``events:`` declares values of)
TYPE_FIELD = "type"
# what a spec that leaves out a required parameter is told, per key ({agg}: the agg name)
_MISSING_HINT: dict[str, str] = {
    "field": "agg {agg!r} needs the path of the value",
    "window": "a duration such as 30d",
    "steps": "a list of event types",
    "within": "a duration such as 1h",
}
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(text: Any, *, feature: str | None = None, what: str = "window") -> int:
    """A spec duration (``window``, ``within``) -> milliseconds: the grammar of
    ``features._time.parse_duration_ms`` (``30d``, ``1h30m``, ``500ms``, ``2w``, plain
    milliseconds), more than zero. Anything else (a YAML number too) is a SpecError
    naming the feature."""
    try:
        return parse_duration_ms(text)
    except DurationError as exc:
        reason = exc.fields["reason"]
    raise SpecError(
        f"feature {feature!r}: bad duration for {what}: {text!r} ({reason})",
        feature=feature,
        problem="bad duration",
    )


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


@dataclass(frozen=True, slots=True)
class Feature:
    """One validated feature. ``window_ms`` None means the whole history."""

    name: str
    entity: str
    agg: str
    field: str | None = None
    where: Where = ()
    window_ms: int | None = None
    steps: tuple[str, ...] = ()
    within_ms: int | None = None

    @property
    def type_name(self) -> str:
        """The rules type name of this feature's value (its aggregation's ``value_type``)."""
        return LOGICS[self.agg].value_type

    @property
    def state_key(self) -> str:
        """Stable key of this feature's state; changes whenever a parameter changes."""
        params = [
            1,  # state format version of the aggregators
            self.name,
            self.agg,
            self.field,
            [[p, list(v)] for p, v in self.where],
            self.window_ms,
            list(self.steps),
            self.within_ms,
        ]
        digest = hashlib.blake2b(orjson.dumps(params), digest_size=4).hexdigest()
        return digest

    def span_ms(self) -> int | None:
        """How far back this feature looks, as its aggregation says: its window (``within``
        for sequences); None for the whole history."""
        return LOGICS[self.agg].span_ms(self)


@dataclass(frozen=True, slots=True)
class ModelDecl:
    """A model the spec declares: its ``name`` (rules read ``model.<name>``), the ``file`` as
    written in the spec, the entity kind it scores and the validated model."""

    name: str
    entity: str
    file: str
    model: TreeModel

    @property
    def column(self) -> str:
        """Where the score goes among the entity's values: ``model.<name>``."""
        return MODEL_PREFIX + self.name


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """A validated feature spec: entity kinds and their features (in spec order), and the
    declared event types (``events``; None when the spec declares none: any type goes)."""

    entities: Mapping[str, str]
    features: tuple[Feature, ...]
    events: tuple[str, ...] | None = None
    #: the spec's ``version:`` (what ``bypass features publish`` publishes it as); None: not set
    version: str | None = None
    #: the models the spec declares (``models:``), in spec order
    models: tuple[ModelDecl, ...] = ()
    _by_entity: Mapping[str, tuple[Feature, ...]] = field(repr=False, compare=False, default_factory=dict)
    _key_getters: tuple[tuple[str, str, Getter | None], ...] = field(repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        # built directly (not by from_dict): derive the private lookup tables
        if not self._by_entity:
            by_entity = {e: tuple(f for f in self.features if f.entity == e) for e in self.entities}
            object.__setattr__(self, "_by_entity", by_entity)
        if not self._key_getters:
            getters = tuple(
                (e, p, None if "." not in p else make_getter(p)) for e, p in self.entities.items()
            )
            object.__setattr__(self, "_key_getters", getters)

    @classmethod
    def from_dict(cls, data: Any, *, models: Mapping[str, TreeModel] | None = None) -> FeatureSpec:
        """Validate an already-parsed spec mapping; raises SpecError naming the feature.

        ``models``: the model files the spec's ``models:`` name, parsed, keyed by the
        ``file`` text as written (``load_spec`` reads them); a declared file missing from it
        is a SpecError."""
        if not isinstance(data, Mapping):
            raise SpecError("feature spec: expected a mapping with 'entities' and 'features'", feature=None)
        unknown = set(data) - set(_TOP_KEYS)
        if unknown:
            raise SpecError(
                f"feature spec: unknown top-level key(s) {sorted(map(str, unknown))} "
                "(expected 'entities', 'features' and optionally 'events', 'models' and 'version')",
                feature=None,
            )
        events = _parse_events(data.get("events"))
        version = data.get("version")
        if version is not None and (not isinstance(version, str | int) or isinstance(version, bool)):
            raise SpecError(
                f"feature spec: 'version' must be a string such as \"2026-12-03.1\", got {version!r}",
                feature=None,
            )
        ents = data.get("entities")
        if not isinstance(ents, Mapping) or not ents:
            raise SpecError(
                "feature spec: 'entities' must map entity kind -> envelope field, e.g. {user: user_id}",
                feature=None,
            )
        entities: dict[str, str] = {}
        for k, v in ents.items():
            if not isinstance(k, str) or not _NAME.match(k) or not isinstance(v, str) or not _PATH.match(v):
                raise SpecError(
                    f"feature spec: entity {k!r}: expected a name mapped to an envelope field path, "
                    f"got {v!r}",
                    feature=None,
                )
            entities[k] = v
        raw = data.get("features")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise SpecError("feature spec: 'features' must be a list", feature=None)
        feats: list[Feature] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            f = _parse_feature(item, i, entities, events)
            if f.name in seen:
                raise SpecError(
                    f"feature {f.name!r}: duplicate name (feature names must be unique)",
                    feature=f.name,
                    problem="duplicate name",
                )
            seen.add(f.name)
            feats.append(f)
        by_entity = {e: tuple(f for f in feats if f.entity == e) for e in entities}
        keys = [f.state_key for f in feats]
        if len(set(keys)) != len(keys):  # pragma: no cover - 32-bit collision
            raise SpecError("feature spec: state key collision; rename a feature", feature=None)
        key_getters = tuple((e, p, None if "." not in p else make_getter(p)) for e, p in entities.items())
        decls = _parse_models(data.get("models"), entities, by_entity, models or {})
        return cls(
            entities=dict(entities),
            features=tuple(feats),
            events=events,
            models=decls,
            version=None if version is None else str(version),
            _by_entity=by_entity,
            _key_getters=key_getters,
        )

    def features_of(self, entity: str) -> tuple[Feature, ...]:
        """The features of one entity kind, in spec order."""
        return self._by_entity.get(entity, ())

    def models_of(self, entity: str) -> tuple[ModelDecl, ...]:
        """The models scoring one entity kind, in spec order."""
        return tuple(m for m in self.models if m.entity == entity)

    def schema(self) -> dict[str, dict[str, str]]:
        """entity -> {feature name -> type name} for the rules compiler (every entity listed);
        each model of the entity is there as ``model.<name>`` of type number."""
        return {
            e: {
                **{f.name: f.type_name for f in self.features_of(e)},
                **{m.column: "number" for m in self.models_of(e)},
            }
            for e in self.entities
        }

    def entity_keys(self, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(entity kind, key) for every entity whose key field the event carries, in spec order.

        A key is a non-empty string, or an integer (given as its decimal string); other
        values (null, empty string, objects) mean the event does not carry that entity.
        """
        out: list[tuple[str, str]] = []
        for ent, path, get in self._key_getters:
            v = event.get(path) if get is None else get(event)
            if type(v) is str:
                if v:
                    out.append((ent, v))
            elif type(v) is int:
                out.append((ent, str(v)))
        return out

    def max_window_ms(self) -> int:
        """The longest finite look-back of any feature (windows and sequence ``within``), in ms.

        Replay warms up by this much so windowed features are exact at the start of the
        replayed range. Allowed lateness is not added (replay reads in event order).
        Whole-history features (no window) cannot be warmed up by any finite amount:
        see ``unbounded_features()``. 0 when the spec has no finite window.
        """
        spans = [s for f in self.features if (s := f.span_ms()) is not None]
        return max(spans, default=0)

    def unbounded_features(self) -> tuple[str, ...]:
        """Names of whole-history features (no window): exact only from the key's first event."""
        return tuple(f.name for f in self.features if f.span_ms() is None)


def _parse_events(raw: Any) -> tuple[str, ...] | None:
    """The optional top-level ``events``: a non-empty list of distinct event type names."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) and _NAME.match(e) for e in raw):
        raise SpecError(
            f"feature spec: 'events' must be a non-empty list of event type names "
            f"(letters, digits, underscores), e.g. [login, order], got {raw!r}"[:300],
            feature=None,
        )
    dup = sorted({e for e in raw if raw.count(e) > 1})
    if dup:
        raise SpecError(f"feature spec: 'events' lists {', '.join(dup)} more than once", feature=None)
    return tuple(raw)


def _parse_models(
    raw: Any,
    entities: Mapping[str, str],
    by_entity: Mapping[str, tuple[Feature, ...]],
    loaded: Mapping[str, TreeModel],
) -> tuple[ModelDecl, ...]:
    """The optional top-level ``models``: ``[{name, file, entity}]``, each checked against
    its model file (``loaded``) and the features of its entity."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("feature spec: 'models' must be a list of {name, file, entity}", feature=None)
    out: list[ModelDecl] = []
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping) or not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(
                f"model #{i + 1}: expected {{name, file, entity}} with a name of letters, digits and "
                f"underscores, got {item!r}"[:300],
                feature=None,
                problem="bad model",
            )

        def err(msg: str, problem: str, feature: str | None = None, model: str = name) -> SpecError:
            return SpecError(f"model {model!r}: {msg}", feature=feature, model=model, problem=problem)

        extra = sorted(str(k) for k in set(item) - set(_MODEL_KEYS))
        if extra:
            raise err(f"unexpected key(s) {extra} (a model has {', '.join(_MODEL_KEYS)})", "unexpected key")
        if any(m.name == name for m in out):
            raise err("declared twice (model names must be unique)", "duplicate name")
        entity, file = item.get("entity"), item.get("file")
        if entity not in entities:
            raise err(
                f"unknown entity {entity!r} (declared entities: {', '.join(entities)})", "unknown entity"
            )
        if not isinstance(file, str) or not file:
            raise err("missing 'file' (the model's JSON file, relative to the feature spec)", "missing field")
        model = loaded.get(file)
        if model is None:
            raise err(
                f"model file {file!r} not found (relative to the feature spec's folder)", "missing file"
            )
        if model.entity != entity:
            raise err(
                f"the file {file!r} holds a model of entity {model.entity!r}, declared for {entity!r}",
                "wrong entity",
            )
        own = {f.name: f for f in by_entity.get(entity, ())}
        for fname in model.features:
            feat = own.get(fname)
            if feat is None:
                other = [e for e, feats in by_entity.items() if any(f.name == fname for f in feats)]
                if other:
                    hint = f"it is a feature of entity {other[0]!r}"
                else:
                    close = difflib.get_close_matches(fname, list(own), n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]!r}?" if close else "retrain it on this spec's features"
                raise err(
                    f"reads feature {fname!r}, which the spec does not define for entity {entity!r} ({hint})",
                    "unknown feature",
                    feature=fname,
                )
            if feat.type_name == "str":
                raise err(f"reads feature {fname!r}, a string: a model reads numbers", "bad feature", fname)
        out.append(ModelDecl(name=name, entity=str(entity), file=file, model=model))
    return tuple(out)


def unknown_event_type(etype: Any, declared: tuple[str, ...] | None) -> str | None:
    """None when ``etype`` is a declared event type (or none are declared), else the
    message: ``unknown event type 'contract_sgn' (did you mean 'contract_sign'?)``.
    Shared by the spec (``where: {type: ...}``, ``steps``) and rule validation."""
    if declared is None or etype in declared:
        return None
    close = difflib.get_close_matches(str(etype), list(declared), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the feature spec declares {', '.join(declared)}"
    return f"unknown event type {etype!r} ({hint})"


def _parse_feature(
    item: Any, i: int, entities: Mapping[str, str], events: tuple[str, ...] | None = None
) -> Feature:
    if not isinstance(item, Mapping):
        raise SpecError(f"feature #{i + 1}: expected a mapping, got {item!r}", feature=None)
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(
            f"feature #{i + 1}: missing or bad 'name' {name!r} (letters, digits, underscores)",
            feature=name if isinstance(name, str) else None,
            problem="missing field",
        )

    def err(msg: str, problem: str) -> SpecError:
        return SpecError(f"feature {name!r}: {msg}", feature=name, problem=problem)

    agg = item.get("agg")
    if agg is None:
        raise err("missing field 'agg'", "missing field")
    logic = LOGICS.get(agg) if isinstance(agg, str) else None
    if logic is None:
        raise err(f"unknown agg {agg!r} (expected one of: {', '.join(sorted(LOGICS))})", "unknown agg")
    entity = item.get("entity")
    if entity is None:
        raise err("missing field 'entity'", "missing field")
    if entity not in entities:
        raise err(
            f"unknown entity {entity!r} (declared entities: {', '.join(entities)})",
            "unknown entity",
        )
    allowed = _COMMON_KEYS | {p.key for p in logic.params}
    extra = set(item) - allowed
    if extra:
        raise err(
            f"unexpected key(s) {sorted(map(str, extra))} for agg {agg!r} "
            f"(allowed: {', '.join(sorted(allowed))})",
            "unexpected key",
        )

    def given(key: str) -> Any:
        """The spec's value of a parameter (its default when left out; None when the
        aggregation does not take it); a SpecError when a required one is missing."""
        p = logic.param(key)
        if p is None:
            return None
        v = item.get(key)
        if v is None:
            if p.required:
                hint = _MISSING_HINT[key].format(agg=agg)
                raise err(f"missing field {key!r} ({hint})", "missing field")
            v = p.default
        return v

    # keys in a fixed order (so the first problem reported does not depend on the agg)
    fld = given("field")
    if fld is not None and (not isinstance(fld, str) or not _PATH.match(fld)):
        raise err(f"bad 'field' {fld!r} (expected a dotted path such as attrs.amount)", "bad field")
    where = _parse_where(item.get("where") or {}, err)
    window = given("window")
    window_ms = None if window is None else parse_duration(window, feature=name, what="window")
    raw_steps = given("steps")
    steps: tuple[str, ...] = ()
    if raw_steps is not None:
        if not isinstance(raw_steps, list) or not raw_steps or not all(isinstance(s, str) for s in raw_steps):
            raise err(f"'steps' must be a non-empty list of event types, got {raw_steps!r}", "bad steps")
        steps = tuple(raw_steps)
    within = given("within")
    within_ms = None if within is None else parse_duration(within, feature=name, what="within")
    for path, values in where:
        for v in values if path == TYPE_FIELD else ():
            if (problem := unknown_event_type(v, events)) is not None:
                raise err(f"'where' type: {problem}", "unknown event type")
    for step in steps:
        if (problem := unknown_event_type(step, events)) is not None:
            raise err(f"'steps': {problem}", "unknown event type")
    feature = Feature(
        name=name,
        entity=entity,
        agg=agg,
        field=fld,
        where=where,
        window_ms=window_ms,
        steps=steps,
        within_ms=within_ms,
    )
    logic.check(feature, err)
    return feature


def _parse_where(where_raw: Any, err: SpecErr) -> Where:
    """``where``: path -> a scalar or a non-empty list of scalars; sorted by path."""
    if not isinstance(where_raw, Mapping):
        raise err(f"'where' must map path -> value or list of values, got {where_raw!r}", "bad where")
    where: list[tuple[str, tuple[Any, ...]]] = []
    for p, v in where_raw.items():
        if not isinstance(p, str) or not _PATH.match(p):
            raise err(f"bad 'where' path {p!r}", "bad where")
        vals = tuple(v) if isinstance(v, list) else (v,)
        if not vals or not all(_scalar(x) and x is not None for x in vals):
            raise err(
                f"'where' {p}: expected a scalar or a non-empty list of scalars, got {v!r}", "bad where"
            )
        where.append((p, vals))
    where.sort(key=lambda pv: pv[0])
    return tuple(where)


def load_spec(source: Any, *, base: Path | None = None) -> FeatureSpec:
    """Load a feature spec from a parsed mapping, YAML/JSON text, or a path to a YAML/JSON file.

    Model files (``models:``) are relative to the spec file's folder, or to ``base`` for a
    mapping or text (default: the working directory).

    The only function of ``features`` that may read a file or import PyYAML (lazily, only
    for YAML input); everything else is pure. Raises SpecError (a ConfigError) on any problem.
    """
    if isinstance(source, Mapping):
        return FeatureSpec.from_dict(source, models=_read_models(source, base or Path()))
    text: str
    base = base or Path()
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and (source.endswith((".yaml", ".yml", ".json")) or Path(source).is_file())
    ):
        path = Path(source)
        base = path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"feature spec {str(path)!r}: cannot read: {exc.strerror}", feature=None) from exc
    elif isinstance(source, str):
        text = source
    else:
        raise SpecError(f"feature spec: expected text, a path or a mapping, got {type(source).__name__}")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # maybe YAML flow style
        else:
            return FeatureSpec.from_dict(parsed, models=_read_models(parsed, base))
    import yaml  # lazy: only this edge helper parses YAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"feature spec: invalid YAML: {exc}", feature=None) from exc
    return FeatureSpec.from_dict(data, models=_read_models(data, base))


def _read_models(data: Any, base: Path) -> dict[str, TreeModel]:
    """The model files a parsed spec declares that exist (relative to ``base``), read and
    validated; a missing one is left out (``from_dict`` reports it), an invalid one is a
    SpecError naming the model."""
    raw = data.get("models") if isinstance(data, Mapping) else None
    out: dict[str, TreeModel] = {}
    for item in raw if isinstance(raw, list) else ():
        file = item.get("file") if isinstance(item, Mapping) else None
        if not isinstance(file, str) or not file or file in out:
            continue
        path = base / file
        if not path.is_file():
            continue
        try:
            out[file] = load_model(path)
        except ModelError as exc:
            name = item.get("name")
            raise SpecError(
                f"model {name!r}: {exc.message}", feature=None, model=name, problem="bad model file"
            ) from None
    return out
