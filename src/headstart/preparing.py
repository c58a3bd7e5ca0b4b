"""``headstart prepare``: a dataset written once as LitData shards at a folder or URL, to stream from there
(``headstart.data.shards``): every image decoded once and resized as the backbone reads it.

>>> shards = prepare("photos/", "s3://bucket/photos-224", backbone="efficientnet_lite0")   # doctest: +SKIP
>>> headstart.fit("s3://bucket/photos-224", strategy="full")                              # doctest: +SKIP
"""

from __future__ import annotations

import os

from headstart.checks import check_input_size
from headstart.data.dataset import load_dataset
from headstart.data.shard_writer import write_shards
from headstart.data.shards import Shards, is_prepared, open_shards
from headstart.errors import DataError
from headstart.models.factory import DEFAULT_BACKBONE, create_model


def prepare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str = "default",
    input_size: int | None = None,
    workers: int | None = None,
    layout: str | None = None,
    val_fraction: float = 0.2,
    eval_fraction: float = 0.2,
    seed: int = 0,
    task: str = "auto",
    progress: bool = False,
) -> Shards:
    """Write DATA (a dataset folder, a CSV manifest or ``demo``) as shards at ``out``, resized as ``backbone``
    with ``weights`` reads at ``input_size`` (None: the size the weights were trained at), with ``workers``
    processes. Splits the data does not have are drawn here (``val_fraction``, ``eval_fraction``, ``seed``), once:
    every run on the shards trains on the same ones. Returns the prepared data (``headstart.data.shards.Shards``).
    Broken images are left out and listed in its manifest; run again after an interruption, it finishes the job."""
    if is_prepared(data):
        raise DataError(f"{data} is prepared data already: train on it directly (headstart train {data}).")
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be 1 or more; received {workers}.")
    check_input_size(input_size)
    ds = load_dataset(data, layout, val_fraction=val_fraction, eval_fraction=eval_fraction, seed=seed, task=task)
    pre = create_model(backbone, 2, weights=weights, input_size=input_size).preprocessing
    write_shards(ds, pre, str(out), workers=workers, progress=progress, seed=seed)
    return open_shards(str(out))
