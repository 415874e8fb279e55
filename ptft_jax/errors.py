"""User-facing errors: one line that names what to fix.

Anything raised as `UserError` is printed by the CLIs as a single line (no
traceback unless `--debug`) and makes the process exit with status 2.
"""


class UserError(Exception):
  """A mistake in the user's config, data or paths (not a bug in ptft_jax)."""


class ConfigError(UserError):
  """A config key or value is wrong."""


class DataError(UserError):
  """A dataset is missing, empty or malformed."""


class CheckpointError(UserError):
  """A checkpoint is missing, corrupt or does not match the model."""


class NonFiniteError(UserError, FloatingPointError):
  """Training produced a NaN / Inf loss or gradient (see config.train.nan_policy)."""
