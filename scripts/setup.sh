# Sourced by main-job.sh and test.sh: install featurecache into ./.venv and set up weights.
#
# - Creates ./.venv with $PYTHON (default python3) if it is missing, and installs
#   featurecache with TensorFlow for the CPU, JAX for the CPU (Keras's JAX backend),
#   ONNX Runtime, OpenVINO, simplejpeg, Dask + s3fs, the data formats (WebDataset, Parquet, Hugging Face), the
#   audit's faiss, cleanlab and umap-learn, keras-hub (with --no-deps: its tensorflow-text requirement
#   would add the full tensorflow wheel beside tensorflow-cpu) and the test tools.
# - Keras's PyTorch backend: the registry's Linux `torch` wheel brings about 2.8 GB of
#   CUDA libraries (measured 2026-11-24), too much for every install. A CPU build is
#   installed when one is already importable or pip can find one without an index (a
#   wheel in pip's find-links, as on the team's machines and CI); otherwise the PyTorch
#   backend tests skip and say how to install it.
# - Offline ImageNet weights: when KERAS_HOME is unset and ../shared/keras exists (the
#   team's machines and CI), copies it to ./.keras-home (Keras needs a writable folder)
#   and points KERAS_HOME there. Elsewhere Keras downloads the weights itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -m pip install --disable-pip-version-check \
        -e ".[cpu,jax,onnx,openvino,simplejpeg,dask,data,huggingface,audit,hub-deps,test]" > .venv/pip-install.log 2>&1 \
    || ! .venv/bin/python -m pip install --disable-pip-version-check --no-deps \
        "keras-hub>=0.21" >> .venv/pip-install.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip-install.log >&2
    echo "setup: pip install failed (log: .venv/pip-install.log)" >&2
    exit 1
fi
if ! .venv/bin/python -c "import torch" 2> /dev/null; then
    # --no-deps first, so that the second install only adds torch's dependencies
    if ! .venv/bin/python -m pip install --disable-pip-version-check --no-index --no-deps \
            torch >> .venv/pip-install.log 2>&1; then
        echo "setup: no CPU build of PyTorch found without an index; the PyTorch backend" \
            "tests will skip (README: Keras backends)" >&2
    elif ! .venv/bin/python -m pip install --disable-pip-version-check torch \
            >> .venv/pip-install.log 2>&1; then
        .venv/bin/python -m pip uninstall -y torch >> .venv/pip-install.log 2>&1 || true
        echo "setup: PyTorch's dependencies did not install (log: .venv/pip-install.log);" \
            "the PyTorch backend tests will skip" >&2
    fi
fi
if [ -z "${KERAS_HOME:-}" ] && [ -d ../shared/keras/models ]; then
    mkdir -p .keras-home/models
    cp -n ../shared/keras/models/* .keras-home/models/ 2>/dev/null || true
    chmod -R u+w .keras-home
    export KERAS_HOME="$PWD/.keras-home"
fi
export PATH="$PWD/.venv/bin:$PATH"
