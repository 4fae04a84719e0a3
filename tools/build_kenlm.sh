#!/usr/bin/env bash
# Builds KenLM's estimator (lmplz) and build_binary from the kenlm source distribution on
# PyPI into a bin folder (default .venv/bin). Needs cmake, a C++ compiler and Boost
# (program_options, system, thread) with zlib; as root they are installed with apt-get,
# otherwise the command to run is printed.
#   bash tools/build_kenlm.sh [BIN_DIR]
set -euo pipefail
BIN=${1:-.venv/bin}
VERSION=0.3.0
URL=https://files.pythonhosted.org/packages/02/6e/f4e159cef39ea4ef2244b4aa32857d447d60a5d0ee269e1b1f8d3723c03e/kenlm-$VERSION.tar.gz
SHA256=c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8
PKGS="cmake g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"

if [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ]; then exit 0; fi
have_deps() {
  command -v cmake >/dev/null && command -v g++ >/dev/null &&
    [ -e /usr/include/boost/program_options.hpp ] && [ -e /usr/include/zlib.h ]
}
if ! have_deps; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing KenLM's build requirements with apt-get: $PKGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q $PKGS >/dev/null
  else
    echo "KenLM's estimator needs: $PKGS" >&2
    echo "Run: sudo apt-get update && sudo apt-get install -y $PKGS" >&2
    exit 1
  fi
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "Building lmplz and build_binary (kenlm $VERSION) into $BIN"
if ! curl -sSfL --retry 3 -o "$WORK/kenlm.tar.gz" "$URL"; then
  python3 -m pip download --no-deps --no-binary :all: --no-build-isolation \
    -d "$WORK" "kenlm==$VERSION" >/dev/null && mv "$WORK"/kenlm-*.tar.gz "$WORK/kenlm.tar.gz"
fi
echo "$SHA256  $WORK/kenlm.tar.gz" | sha256sum -c --quiet -
tar xzf "$WORK/kenlm.tar.gz" -C "$WORK"
mkdir -p "$WORK/kenlm-$VERSION/build"
if ! (cd "$WORK/kenlm-$VERSION/build" &&
      cmake .. -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 &&
      make -j"$(nproc)" lmplz build_binary) > "$WORK/build.log" 2>&1; then
  tail -n 30 "$WORK/build.log" >&2
  echo "building KenLM's lmplz failed (the log's end is above)" >&2
  exit 1
fi
mkdir -p "$BIN"
cp "$WORK/kenlm-$VERSION/build/bin/lmplz" "$WORK/kenlm-$VERSION/build/bin/build_binary" "$BIN/"
echo "lmplz and build_binary in $BIN"
