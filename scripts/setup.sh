# Sourced by main-job.sh and test.sh: install featurecache into ./.venv and set up weights.
#
# - Creates ./.venv with $PYTHON (default python3) if it is missing, and installs
#   featurecache with TensorFlow for the CPU, ONNX Runtime, Dask + s3fs, and the test tools.
# - Offline ImageNet weights: when KERAS_HOME is unset and ../shared/keras exists (the
#   team's machines and CI), copies it to ./.keras-home (Keras needs a writable folder)
#   and points KERAS_HOME there. Elsewhere Keras downloads the weights itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[cpu,onnx,dask,test]" \
        > .venv/pip-install.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip-install.log >&2
    echo "setup: pip install failed (log: .venv/pip-install.log)" >&2
    exit 1
fi
if [ -z "${KERAS_HOME:-}" ] && [ -d ../shared/keras/models ]; then
    mkdir -p .keras-home/models
    cp -n ../shared/keras/models/* .keras-home/models/ 2>/dev/null || true
    chmod -R u+w .keras-home
    export KERAS_HOME="$PWD/.keras-home"
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
