"""Offline image data: TFDS sources, Grain pipelines, embedded `digits` dataset."""

from ptft_jax.data import text  # registers the "text" data kind
from ptft_jax.data.bundle import BUILDERS, DataBundle, example_batch, make_data
from ptft_jax.data.pipeline import (
    eval_batches,
    iterator_restore_args,
    iterator_save_args,
    train_iterator,
)
from ptft_jax.data.sources import DatasetInfo, dataset_info, default_data_dir

__all__ = [
    "BUILDERS",
    "DataBundle",
    "example_batch",
    "make_data",
    "DatasetInfo",
    "dataset_info",
    "default_data_dir",
    "eval_batches",
    "iterator_restore_args",
    "iterator_save_args",
    "text",
    "train_iterator",
]
