"""Text data: WordPiece and Hugging Face tokenizers, corpus / TFDS / JSONL sources, SFT data,
Grain pipelines.

`config.data.kind = "text"` selects `text_data` (registered in
`ptft_jax.data.BUILDERS`); `default_config()` lists its keys.
"""

from ptft_jax.data import bundle
from ptft_jax.data.text import sft
from ptft_jax.data.text.hf_tokenizer import HfTokenizer, load_hf_tokenizer
from ptft_jax.data.text.pipeline import (
    FORMATS,
    TextInfo,
    default_config,
    padded_batches,
    pretraining_config,
    pretraining_eval_set,
    pretraining_iterator,
    sft_config,
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
    hf_vocab,
    load_tokenizer,
    make_tokenizer,
    vocab_file_size,
    vocab_is_uncased,
)

bundle.BUILDERS["text"] = text_data

__all__ = [
    "CORPUS_FILE", "FORMATS", "SPECIAL_TOKENS", "HfTokenizer", "TextInfo", "Vocab",
    "default_config", "example_name", "example_path", "hf_vocab", "load_hf_tokenizer",
    "load_tokenizer", "make_tokenizer", "padded_batches", "pretraining_config",
    "pretraining_eval_set", "pretraining_iterator", "read_corpus", "read_jsonl",
    "resolve_path", "sft", "sft_config", "text_data", "vocab_file_size", "vocab_is_uncased",
]
