"""Offline image data: TFDS sources, image folders, Grain pipelines, embedded `digits` dataset."""

from ptft_jax.data import (
    image_folder,  # registers the "folder" image source
    text,  # registers the "text" data kind
)
from ptft_jax.data.bundle import BUILDERS, DataBundle, example_batch, make_data
from ptft_jax.data.pipeline import (
    eval_batches,
    iterator_restore_args,
    iterator_save_args,
    train_iterator,
)
from ptft_jax.data.preprocessing import Preprocessing
from ptft_jax.data.preprocessing import resolve as resolve_preprocessing
from ptft_jax.data.sources import DatasetInfo, dataset_info, default_data_dir

__all__ = [
    "BUILDERS",
    "DataBundle",
    "example_batch",
    "image_folder",
    "make_data",
    "DatasetInfo",
    "Preprocessing",
    "dataset_info",
    "default_data_dir",
    "eval_batches",
    "iterator_restore_args",
    "iterator_save_args",
    "resolve_preprocessing",
    "text",
    "train_iterator",
]
