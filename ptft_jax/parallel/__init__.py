"""Where arrays live: meshes, sharding rules, multi-host start-up, memory arithmetic.

  sharding.py   the (data, fsdp, tensor) mesh -- the one place meshes are built --,
                logical-axis rules (parameter path -> mesh axes), host batches -> global arrays
  multihost.py  jax.distributed initialization from flags, environment or SLURM
  memory.py     per-device bytes of parameters, optimizer state and activations

May import: ptft_jax.errors, ptft_jax.utils. Nothing about models, tasks or training.
"""

from ptft_jax.parallel.sharding import Layout, host_to_global, make_mesh, replicated

__all__ = ["Layout", "host_to_global", "make_mesh", "replicated"]
