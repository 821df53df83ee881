#!/usr/bin/env bash
# Creates the virtual environment and installs triflow3d with everything its tests and demo need.
# torch is installed first, pinned to 2.13.0: that CPU build lies on the project machines' disk. The
# package itself asks only for a range (torch>=2.4), which the installed torch satisfies, so pip keeps it
# and never downloads a multi-GB CUDA build.
set -euo pipefail
venv=${1:-.venv}
py=${2:-python3}
# System libraries for the offscreen renderer (Mesa EGL / llvmpipe). Present on the base image;
# installed here when missing and when we are allowed to (root with apt).
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 >/dev/null
  else
    echo "warning: libEGL not found; rendering falls back to the CPU ray caster" >&2
  fi
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
"$venv/bin/pip" install -q --disable-pip-version-check -e ".[dev,train,serve]"
