#!/usr/bin/env bash
# Checks the text-to-speech and audio tools the corpus synthesizer needs; installs
# them with apt-get when running as root, otherwise prints the command to run.
set -u
PKGS="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox"

missing() {
  local m=""
  for tool in espeak-ng flite festival text2wave sox; do
    command -v "$tool" >/dev/null 2>&1 || m="$m $tool"
  done
  local nvoices
  nvoices=$(find /usr/share/festival/voices -mindepth 2 -maxdepth 2 -type d 2>/dev/null | wc -l)
  [ "$nvoices" -ge 2 ] || m="$m festival-voices(found:$nvoices,need:2)"
  echo "$m"
}

m=$(missing)
[ -z "$m" ] && exit 0
echo "Missing system tools:$m"
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing with apt-get: $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q $PKGS >/dev/null || {
    echo "apt-get install failed; run: sudo apt-get update && sudo apt-get install -y $PKGS" >&2
    exit 1
  }
  m=$(missing)
  [ -z "$m" ] && exit 0
  echo "Still missing after apt-get:$m" >&2
  exit 1
fi
echo "Run: sudo apt-get update && sudo apt-get install -y $PKGS" >&2
exit 1
