#!/usr/bin/env bash
# The GPU benchmark (issue 17): BERT-base masked LM at sequence 512 and the ~1B decoder of
# configs/decoder_1b.py at sequence 2048, bfloat16, one GPU; step time, MFU against the
# datasheet peak and against a bfloat16 8192^3 matmul measured in the same process
# (`python -m ptft_jax.bench --workload gpu_bert_base_mlm gpu_decoder_1b`, docs/performance.md).
#
#   bash launch/gpu_bench.sh wheels        # where pip reaches a package index: the wheels of
#                                          # ptft_jax's requirements that a GPU image with its
#                                          # own jax[cuda], flax, optax and orbax lacks -> .whl/
#   bash launch/gpu_bench.sh run [OUT [ARGS...]]  # on the GPU machine, from the repository
#                                          # root: installs .whl/ into /tmp/site (no network
#                                          # needed), writes OUT/gpu_bench.jsonl (default
#                                          # runs/); ARGS go to the bench (`--tiny`: toy
#                                          # shapes, a smoke test that runs on a CPU too)
#
# The GPU machine's own jax, flax, optax and orbax are used as they are (a CUDA jaxlib is too
# large to carry); the record's `jax` field says which. Wheels are for GPU_PYTHON (default
# 3.12), the Python of that machine. .whl/ is git-ignored: name it in whatever copies the
# working tree to the GPU machine (the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"

# What ptft_jax imports beyond jax / flax / optax / orbax / numpy: the data stack (tfds,
# grain), ml_collections, and what they import in turn. Versions as in requirements.txt.
WHEELS=(ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10
        tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1
        portpicker==1.6.0 toml==0.10.2 dm-tree==0.1.10 simple-parsing==0.1.9
        docstring-parser==0.18.0 termcolor==3.3.0)

case "$mode" in
  wheels)
    py="${GPU_PYTHON:-3.12}"
    mkdir -p .whl
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version "$py" --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    # promise is published as a source archive only: build its (pure-Python) wheel here.
    python3 -m pip wheel -q --disable-pip-version-check --no-deps -w .whl promise==2.3
    du -sh .whl
    ;;
  run)
    out="${2:-runs}"
    mkdir -p "$out"
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    # Let XLA take GPU memory as it needs it: the decoder holds ~50 GB at batch 8.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
    python3 -m ptft_jax.bench --workload gpu_bert_base_mlm gpu_decoder_1b \
      --out "$out/gpu_bench.jsonl" "${@:3}"
    ;;
  *)
    echo "usage: bash launch/gpu_bench.sh wheels | run [OUT]" >&2
    exit 2
    ;;
esac
