"""Text data: WordPiece tokenization, corpus / TFDS / JSONL sources, Grain pipelines.

`config.data.kind = "text"` selects `text_data` (registered in
`ptft_jax.data.BUILDERS`); `default_config()` lists its keys.
"""

from ptft_jax.data import bundle
from ptft_jax.data.text.pipeline import (
    FORMATS,
    TextInfo,
    default_config,
    padded_batches,
    pretraining_config,
    pretraining_eval_set,
    pretraining_iterator,
    text_data,
)
from ptft_jax.data.text.sources import (
    CORPUS_FILE,
    example_name,
    example_path,
    read_corpus,
    read_jsonl,
    resolve_path,
)
from ptft_jax.data.text.tokenizer import (
    SPECIAL_TOKENS,
    Vocab,
    load_tokenizer,
    make_tokenizer,
    vocab_file_size,
    vocab_is_uncased,
)

bundle.BUILDERS["text"] = text_data

__all__ = [
    "CORPUS_FILE", "FORMATS", "SPECIAL_TOKENS", "TextInfo", "Vocab", "default_config",
    "example_name", "example_path", "load_tokenizer", "make_tokenizer", "padded_batches",
    "pretraining_config", "pretraining_eval_set", "pretraining_iterator", "read_corpus",
    "read_jsonl", "resolve_path", "text_data", "vocab_file_size", "vocab_is_uncased",
]
