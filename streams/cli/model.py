"""``bypass model dataset | train``: point-in-time training sets by replay, and models on them."""

from __future__ import annotations

from pathlib import Path

import click

from features import format_ms
from streams.cli.params import DURATION, TIME

_DATASET_HELP = """Build a training set: one row per decision, features as live computed them.

\b
One row per (event, entity) decision of --entity in [FROM, TO): the event id, time
and type, the entity key, every feature of that entity kind exactly as the live
path computed it at that event (the rows are computed by replay, through the same
code and in the same order as the live worker: no value comes from a later event),
and the label. Same range, same spec, same labels: the same file, byte for byte.

\b
Labels (--labels):
  clickhouse   the labels in risk_labels (`bypass labels import`);
  FILE         a label file (CSV or JSON Lines: entity, key, label[, ts]) or the
               truth.jsonl of `bypass simulate`.
The horizon rule: a row of an entity at event time t is positive (label = 1) when
the entity has a bad label (any but good, legit, benign, false_positive,
not_fraud) at a time ts with t <= ts <= t + HORIZON (--horizon, default 30d), or a
timeless one (no ts, as the simulator's truth). A label before the event does not
count. Column `labels` names the labels that made the row positive.

\b
Output (--out): .parquet (needs pyarrow: pip install 'bypass-analyzer[model]') or
.jsonl. Columns: event_id, ts, event_type, entity, key, the features in spec
order, label, labels; rows sorted by (ts, event_id, key).
"""

_TRAIN_HELP = """Train a model on a dataset and write it as a model file.

\b
The rows are ordered by event time and cut at the time that leaves
--test-fraction of them after it: the model learns from the earlier rows and is
measured on the later ones (never a random split). --kind gbdt is scikit-learn's
HistGradientBoostingClassifier, random_forest its RandomForestClassifier; missing
values are read as the stream reads them. Prints AUC and precision / recall at a
few score thresholds on the test rows.

\b
--target: label (default) = any bad label; or a label name (account_resale ...):
rows whose `labels` name it are positive.

\b
The model file is JSON trees with the feature list and a version (a hash of the
content): it holds only numbers and names, so loading it cannot run code. Declare
it in the feature spec and read it in rules:
  models:
    - {name: resale, file: models/resale.json, entity: user}
  when: model.resale > 0.8 and phone_changes_30d > 1
"""


@click.group()
def model() -> None:
    """Models: training sets from replay, training, and the model files rules read."""


@model.command("dataset", help=_DATASET_HELP)
@click.option("--from", "from_ms", type=TIME, required=True, help="start of the range (event time)")
@click.option("--to", "to_ms", type=TIME, required=True, help="end of the range, exclusive")
@click.option("--entity", required=True, help="the entity kind of the rows (user, device, ip ...)")
@click.option("--events", default="", help="only decisions on these event types, comma-separated")
@click.option("--labels", "labels_source", required=True, help="clickhouse, or a label / truth file")
@click.option(
    "--horizon", type=DURATION, default="30d", show_default=True, help="label horizon after the event"
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="FILE.parquet or .jsonl",
)
@click.option(
    "--source",
    type=click.Choice(["kafka", "archive"]),
    default="kafka",
    show_default=True,
    help="read the raw topics, or the ClickHouse event archive",
)
@click.option("--topics", default="", help="raw topics (default: BYPASS_RAW_TOPICS), comma-separated")
@click.option("--warmup", default="auto", show_default=True, help="history read first to rebuild windows")
def dataset(
    from_ms: int,
    to_ms: int,
    entity: str,
    events: str,
    labels_source: str,
    horizon: int,
    out: Path,
    source: str,
    topics: str,
    warmup: str,
) -> None:
    from rich.console import Console

    from streams.cli.params import check_entity_kind
    from streams.modeling.dataset import (
        DatasetRequest,
        build_dataset,
        labels_from_clickhouse,
        labels_from_file,
        write_dataset,
    )
    from streams.settings import Settings

    settings = Settings()
    entity = check_entity_kind(entity, settings)
    if out.suffix.lower() not in (".parquet", ".jsonl"):
        raise click.BadParameter("write a .parquet or a .jsonl file", param_hint="--out")
    if labels_source == "clickhouse":
        labels = labels_from_clickhouse(settings, entity)
    else:
        path = Path(labels_source)
        if not path.is_file():
            raise click.BadParameter(
                f"{labels_source!r} is neither 'clickhouse' nor a readable file", param_hint="--labels"
            )
        labels = labels_from_file(path)
    request = DatasetRequest(
        from_ms=from_ms,
        to_ms=to_ms,
        entity=entity,
        events=tuple(t.strip() for t in events.split(",") if t.strip()),
        horizon_ms=horizon,
        source=source,
        topics=tuple(t.strip() for t in topics.split(",") if t.strip()),
        warmup=warmup,
    )
    data = build_dataset(settings, request, labels, console=Console(stderr=True))
    write_dataset(data, out)
    click.echo(
        f"wrote {len(data):,} rows ({sum(data.label):,} positive, {len(set(data.key)):,} {entity} keys, "
        f"{len(data.features)} features) for [{format_ms(from_ms)}, {format_ms(to_ms)}) to {out}"
    )


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(  # noqa: B904 - a usage error, not a chained failure
            f"{text!r}: comma-separated numbers such as 0.5,0.9", param_hint="--thresholds"
        )
    if not values:
        raise click.BadParameter("give at least one threshold", param_hint="--thresholds")
    return values


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@model.command("train", help=_TRAIN_HELP)
@click.option(
    "--dataset",
    "dataset_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="a file of `bypass model dataset`",
)
@click.option("--target", default="label", show_default=True, help="label (any bad label) or a label name")
@click.option(
    "--kind",
    type=click.Choice(["gbdt", "random_forest"]),
    default="gbdt",
    show_default=True,
    help="the learner",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="the model file (.json)",
)
@click.option("--name", default=None, help="the model's name (default: the target, or the entity kind)")
@click.option("--trees", type=click.IntRange(1, 5000), default=100, show_default=True, help="number of trees")
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.05, 0.95),
    default=0.3,
    show_default=True,
    help="share of the rows, the latest, kept for testing",
)
@click.option(
    "--thresholds", default="0.1,0.3,0.5,0.7,0.9", show_default=True, help="score thresholds to report"
)
@click.option("--features", "feature_list", default="", help="features to use (default: every numeric one)")
def train(
    dataset_path: Path,
    target: str,
    kind: str,
    out: Path,
    name: str | None,
    trees: int,
    test_fraction: float,
    thresholds: str,
    feature_list: str,
) -> None:
    from streams.modeling.dataset import read_dataset
    from streams.modeling.train import train as train_model

    cuts = _thresholds(thresholds)
    data = read_dataset(dataset_path)
    trained = train_model(
        data,
        target=target,
        kind=kind,
        name=name,
        trees=trees,
        test_fraction=test_fraction,
        thresholds=cuts,
        features=tuple(f.strip() for f in feature_list.split(",") if f.strip()) or None,
    )
    m = trained.model
    out.write_bytes(m.dumps())
    click.echo(
        f"trained {m.kind} {m.name!r} ({len(m.trees)} trees over {len(m.features)} features of {m.entity}) "
        f"on {trained.train_rows:,} rows before {format_ms(trained.split_ms)} "
        f"({trained.train_positives:,} positive); tested on {trained.test_rows:,} later rows "
        f"({trained.test_positives:,} positive)"
    )
    auc = "- (the test rows hold one class only)" if trained.auc is None else f"{trained.auc:.4f}"
    click.echo(f"AUC on the test rows: {auc}")
    click.echo(f"{'threshold':>9}  {'flagged':>8}  {'precision':>9}  {'recall':>7}")
    for cut, precision, recall, flagged in trained.at_thresholds:
        click.echo(f"{cut:>9g}  {flagged:>8,}  {_pct(precision):>9}  {_pct(recall):>7}")
    click.echo(
        f"wrote {out} (version {m.version}); declare it in the feature spec: "
        f"models: [{{name: {m.name}, file: {out.name}, entity: {m.entity}}}] and read model.{m.name} in rules"
    )
