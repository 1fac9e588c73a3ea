#!/usr/bin/env bash
# Install the system programs vidpipe needs (Debian packages), or say which are missing.
# Usage: scripts/system-deps.sh [extra-package ...]
set -euo pipefail

declare -A provides=([ffmpeg]=ffmpeg [ffprobe]=ffmpeg [espeak-ng]=espeak-ng
                     [redis-server]=redis-server [redis-cli]=redis-tools
                     [chromium]=chromium [wrk]=wrk)
wanted=("$@")
missing=()
for cmd in ffmpeg ffprobe "${wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${provides[$cmd]:-$cmd}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "vidpipe needs these system packages: ${missing[*]}" >&2
  echo "install them (e.g. sudo apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
