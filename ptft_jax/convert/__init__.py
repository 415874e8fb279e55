"""Weight converters from other frameworks' checkpoints (safetensors, no torch).

  load_hf_bert / load_hf_bert_heads / export_hf_bert / export_hf_classifier:
    Hugging Face BERT (`ptft_jax.convert.hf_bert`).
  export_run: a fine-tuned text classifier run -> HF BertForSequenceClassification
    (`ptft_jax.convert.run_export`).
  minilm_dir: a real BERT (all-MiniLM-L6-v2) for tests (`ptft_jax.convert.minilm`).
  CLI: `python -m ptft_jax.convert hf-bert --src DIR --workdir OUT`,
       `python -m ptft_jax.convert export-hf --workdir RUN --out DIR`.

Attributes are imported lazily, so `python -m ptft_jax.convert.minilm` stays
light (no jax import).
"""

import importlib

_EXPORTS = {
  "export_hf_bert": "hf_bert",
  "export_hf_classifier": "hf_bert",
  "export_run": "run_export",
  "load_hf_bert": "hf_bert",
  "load_hf_bert_heads": "hf_bert",
  "minilm_dir": "minilm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
