"""Recurrent backbones over token sequences: stacked (bi)directional LSTM or GRU.

Padding is masked, not just ignored: at a padded step (`attention_mask` 0) the
state is carried through unchanged and the output is zero, so outputs at the
real steps and the final state equal those of the unpadded sequence, wherever
the padding sits (right, left, or in between). Packed rows (`segment_ids`,
several documents per row) restart from the zero state at every document, so
no document sees another.

Parameter layout (relative to `backbone/`):

  embed/embedding                        [vocab_size, embed_dim]
  layer_{i}_forward/cell/...             flax OptimizedLSTMCell / GRUCell params
  layer_{i}_backward/cell/...            (bidirectional only)

Features:
  sequence         [batch, seq, hidden * directions]  last layer, zeros at padded steps
  features/pooled  [batch, hidden * directions]       last layer's final hidden state:
                   forward after the last real token, backward after the first
  word_embeddings  [vocab_size, embed_dim]            the table (for tied LM heads)
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class MaskedRnn(nn.Module):
  """One direction of one recurrent layer; masked steps keep the state.

  Returns (final carry, outputs [batch, seq, hidden]); the carry is `(c, h)` for
  the LSTM and `h` for the GRU, each [batch, hidden].
  """

  cell: str
  hidden_size: int
  reverse: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, reset: jax.Array | None = None):
    """Scans the cell over `x` [batch, seq, features].

    Args:
      x: inputs [batch, seq, features].
      mask: bool [batch, seq]; True = real step, False = padding (state kept, output 0).
      reset: optional bool [batch, seq]; True where the state restarts from zero
        before a real step (a new document, in scan order).
    """
    cell = CELLS[self.cell](self.hidden_size, name="cell")
    zeros = cell.initialize_carry(jax.random.PRNGKey(0), x[:, 0].shape)
    reset = jnp.zeros(mask.shape, bool) if reset is None else reset & mask

    def step(cell, carry, inputs):
      x_t, m_t, r_t = inputs
      carry = jax.tree_util.tree_map(lambda z, c: jnp.where(r_t[:, None], z, c), zeros, carry)
      new_carry, y = cell(carry, x_t)
      keep = m_t[:, None]
      carry = jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
      return carry, jnp.where(keep, y, 0.0)

    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, reverse=self.reverse)
    return scan(cell, zeros, (x, mask, reset))


def _hidden(carry) -> jax.Array:
  return carry[1] if isinstance(carry, tuple) else carry


class RnnBackbone(nn.Module):
  """Embedding, then `num_layers` LSTM/GRU layers over `batch["input_ids"]` [batch, seq].

  `batch["attention_mask"]` [batch, seq] (1 = real token) marks padding; all
  steps are real without it. `batch["segment_ids"]` [batch, seq] (packed rows)
  restarts the state wherever the id changes.

  Attributes:
    vocab_size: rows of the embedding table.
    cell: "lstm" or "gru".
    hidden_size: state size per direction.
    num_layers: stacked layers; each reads the previous one's outputs.
    bidirectional: add a backward pass per layer (not for next-token prediction).
    embed_dim: embedding width (default: hidden_size, which a tied LM head needs).
    dropout_rate: dropout on every layer's input and on the last layer's output.
  """

  vocab_size: int
  cell: str = "lstm"
  hidden_size: int = 256
  num_layers: int = 2
  bidirectional: bool = False
  embed_dim: int = 0
  dropout_rate: float = 0.0

  def __post_init__(self):
    if self.cell not in CELLS:
      raise ConfigError(f"config.model.cell: {self.cell!r} is not one of {sorted(CELLS)}")
    super().__post_init__()

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    mask = batch.get("attention_mask")
    mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    fwd_reset = bwd_reset = None
    if "segment_ids" in batch:
      seg = jnp.asarray(batch["segment_ids"])
      change = seg[:, 1:] != seg[:, :-1]  # [batch, seq - 1]: a new segment at t + 1
      edge = jnp.zeros((seg.shape[0], 1), bool)
      fwd_reset = jnp.concatenate([edge, change], axis=1)
      bwd_reset = jnp.concatenate([change, edge], axis=1)
    embed = nn.Embed(self.vocab_size, self.embed_dim or self.hidden_size, name="embed")
    x = embed(ids)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    for i in range(self.num_layers):
      x = drop(x)
      carry, fwd = MaskedRnn(self.cell, self.hidden_size, name=f"layer_{i}_forward")(
          x, mask, fwd_reset)
      final = [_hidden(carry)]
      if self.bidirectional:
        carry, bwd = MaskedRnn(self.cell, self.hidden_size, reverse=True,
                               name=f"layer_{i}_backward")(x, mask, bwd_reset)
        final.append(_hidden(carry))
        fwd = jnp.concatenate([fwd, bwd], axis=-1)
      x = fwd
    pooled = drop(jnp.concatenate(final, axis=-1))
    return {"sequence": drop(x), "features": pooled, "pooled": pooled,
            "word_embeddings": embed.embedding}
