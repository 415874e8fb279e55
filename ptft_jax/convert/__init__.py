"""Weight converters from other frameworks' checkpoints (safetensors, no torch).

  load_hf / hf_task_config: any supported Hugging Face directory, by its model_type
    (`ptft_jax.convert.hf`).
  load_hf_decoder: Hugging Face gpt2 / llama / mistral / qwen2 / gemma -> gpt backbone +
    causal LM head (`ptft_jax.convert.hf_decoder`).
  load_hf_bert / load_hf_bert_heads / export_hf_bert / export_hf_classifier:
    Hugging Face BERT (`ptft_jax.convert.hf_bert`).
  import_hf / import_hf_decoder / import_hf_bert: a HF directory -> pretrained workdir
    (`ptft_jax.convert.workdir`).
  export_run: a fine-tuned run -> HF: a decoder (gpt, causal_lm / sft) -> *ForCausalLM or
    a PEFT LoRA adapter; a text classifier -> BertForSequenceClassification
    (`ptft_jax.convert.run_export`).
  export_hf_decoder / export_hf_adapter / config_to_hf: decoder params -> a HF directory /
    PEFT adapter, a gpt model config -> HF config.json (`ptft_jax.convert.decoder_export`,
    `ptft_jax.convert.hf_decoder`).
  load_vision / read_vision / import_vision: torchvision / timm ResNets, timm / HF ViTs
    (`ptft_jax.convert.vision`; CLI `python -m ptft_jax.convert vision`).
  minilm_dir: a real BERT (all-MiniLM-L6-v2) for tests (`ptft_jax.convert.minilm`).
  CLI: `python -m ptft_jax.convert hf --src DIR --workdir OUT` (any supported model),
       `python -m ptft_jax.convert hf-bert --src DIR --workdir OUT`,
       `python -m ptft_jax.convert export-hf --workdir RUN --out DIR [--adapter-only]`.

Attributes are imported lazily, so `python -m ptft_jax.convert.minilm` stays
light (no jax import).
"""

import importlib

_EXPORTS = {
  "config_to_hf": "hf_decoder",
  "export_hf_adapter": "decoder_export",
  "export_hf_decoder": "decoder_export",
  "export_hf_bert": "hf_bert",
  "export_hf_classifier": "hf_bert",
  "export_run": "run_export",
  "hf_task_config": "hf",
  "import_hf": "workdir",
  "import_hf_bert": "workdir",
  "import_hf_decoder": "workdir",
  "import_vision": "workdir",
  "load_hf": "hf",
  "load_hf_bert": "hf_bert",
  "load_hf_bert_heads": "hf_bert",
  "load_hf_decoder": "hf_decoder",
  "load_vision": "vision",
  "minilm_dir": "minilm",
  "read_vision": "vision",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
