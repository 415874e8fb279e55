"""Parses config-file arguments like `configs/x.py:tiny,pretrain=contrastive`."""


def parse_arg(arg: str | None, **defaults):
  """'a=1,b,c=x' -> {'a': 1, 'b': True, 'c': 'x'} on top of `defaults` (typed like them).

  Unknown names raise ValueError listing the allowed ones.
  """
  values = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    name, has_value, raw = part.partition("=")
    if name not in defaults:
      raise ValueError(f"unknown config argument {name!r}; allowed: {sorted(defaults)}")
    if not has_value:
      values[name] = True
      continue
    default = defaults[name]
    if isinstance(default, bool):
      values[name] = raw.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      values[name] = int(raw)
    elif isinstance(default, float):
      values[name] = float(raw)
    else:
      values[name] = raw
  return values
