#!/usr/bin/env bash
# Set up everything mobilenets needs, idempotently: system packages (as root), .venv, the package.
# Usage: bash scripts/setup.sh [extra]   (extra: "test" adds pytest, timm, ruff, playwright and,
# as root, Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"

need_apt=()
"$PY" -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv python3-pip)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
# The study test renders report.html in headless Chromium (never `playwright install`).
if [ "$extra" = test ] && ! command -v chromium >/dev/null; then need_apt+=(chromium); fi
# C code generation: host gcc; the tests also build for Cortex-M and run under QEMU (they skip
# without them, saying why).
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v make >/dev/null || need_apt+=(make)
if [ "$extra" = test ]; then
  command -v arm-none-eabi-gcc >/dev/null || need_apt+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
  command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
  # the generated C is also built with clang (strict warnings; Arm Compiler 6 / LLVM users)
  command -v clang >/dev/null || need_apt+=(clang)
  command -v g++ >/dev/null || need_apt+=(g++)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
      --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: not root, skipping system packages: ${need_apt[*]}" \
         "(Fashion-MNIST then downloads through torchvision when online)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "setup: pip install -e '$spec' (torch is large: the first run takes a few minutes)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import mobilenets, torch; print('setup: mobilenets', mobilenets.__version__, 'torch', torch.__version__)"
