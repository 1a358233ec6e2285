"""Models: point-in-time training sets from replay, and training tree ensembles on them.

    rows = build_dataset(settings, DatasetRequest(from_ms, to_ms, entity="user"))   # by replay
    write_dataset(rows, "users.parquet")
    trained = train(read_dataset("users.parquet"), target="label", kind="gbdt", name="resale")
    Path("resale.json").write_bytes(trained.model.dumps())

:mod:`streams.modeling.dataset` computes every feature of an entity kind at each decision
exactly as the live path did (it is replay: the same batch step, the same order) and joins
the labels with the horizon rule; :mod:`streams.modeling.train` trains with scikit-learn on
a time-based split and converts the trees to the model file format of
:mod:`features._model` (scored in the stream, pure). Training needs the ``model`` extra
(scikit-learn, pyarrow, numpy); scoring needs none of it.
"""

from streams.modeling.dataset import (
    DEFAULT_HORIZON_MS,
    Dataset,
    DatasetRequest,
    LabelIndex,
    build_dataset,
    labels_from_clickhouse,
    labels_from_file,
    read_dataset,
    write_dataset,
)
from streams.modeling.train import Trained, export_sklearn, train

__all__ = [
    "DEFAULT_HORIZON_MS",
    "Dataset",
    "DatasetRequest",
    "LabelIndex",
    "Trained",
    "build_dataset",
    "export_sklearn",
    "labels_from_clickhouse",
    "labels_from_file",
    "read_dataset",
    "train",
    "write_dataset",
]
