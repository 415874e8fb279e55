"""The host side of `config.train.nan_policy`: decide, from on-device flags, whether to stop.

The train step computes `finite` (loss and gradient norm) on device. The loop
hands each step's flag to `NonFiniteGuard.add` and reads a verdict only at log
steps and before saves, so no step waits for the host. "stop" stops at the
first non-finite step; "skip" (the step already kept the old state) stops after
more than `max_skips` non-finite steps in a row. Nothing here raises: the loop
reads the verdict and decides.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Verdict:
  skipped: int  # non-finite steps skipped since the last verdict ("skip" policy)
  error: str | None  # why the run must stop, or None


class NonFiniteGuard:
  """Collects (step, finite flag, loss) per step; `verdict()` reads them in one transfer."""

  def __init__(self, policy: str, max_skips: int):
    self.policy, self.max_skips = policy, int(max_skips)
    self.pending: list[tuple[int, jax.Array, jax.Array]] = []  # (step, finite, loss)
    self.streak = 0  # non-finite steps in a row so far

  def add(self, step: int, finite: jax.Array, loss: jax.Array):
    self.pending.append((step, finite, loss))

  def verdict(self) -> Verdict:
    """Reads the pending flags (one device-to-host copy) and applies the policy."""
    flags = jax.device_get([finite for _, finite, _ in self.pending])
    skipped, error = 0, None
    for (step, _, loss), finite in zip(self.pending, flags, strict=True):
      if finite:
        self.streak = 0
      elif self.policy == "stop":
        error = (f"non-finite loss or gradient at step {step} (loss {float(loss)}); it was "
                 "not saved; lower config.optim.lr, set config.optim.grad_clip_norm, or set "
                 "config.train.nan_policy='skip'")
        break
      else:
        self.streak, skipped = self.streak + 1, skipped + 1
        if self.streak > self.max_skips:
          error = (f"{self.streak} non-finite steps in a row (the last at step {step}) exceed "
                   f"config.train.max_consecutive_skips={self.max_skips}; lower "
                   "config.optim.lr or set config.optim.grad_clip_norm")
          break
    self.pending.clear()
    return Verdict(skipped, error)


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when no floating leaf of `tree` holds a NaN or an Inf."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
