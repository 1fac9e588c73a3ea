#!/usr/bin/env bash
# Install what vidpipe needs from Debian (as root), or print the apt-get line that would.
# Usage: scripts/system-deps.sh NEED...   (the needs are the names in the table below)
#
# Each need is checked by what is really used: a command, a shared library, a Python module
# or a file. So a need met some other way (a hand-built ffmpeg, a pyenv Python with its own
# ensurepip) installs nothing, and one that no command names (libatomic1) is not missed.
set -euo pipefail

python="${PYTHON:-python3}"  # the interpreter the virtualenv is made from
export PATH="$PATH:/usr/sbin:/sbin"  # ldconfig, for a user whose PATH lacks them

have() { command -v "$1" >/dev/null 2>&1; }
lib() { ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$1 "; }
pg_bin() {  # PostgreSQL's server programs: PG_BIN, else the newest Debian installs
  if [ -n "${PG_BIN:-}" ]; then [ -x "$PG_BIN/initdb" ]; return; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# need: present when ... ; package
present() {
  case "$1" in
    venv) "$python" -c 'import ensurepip, venv' 2>/dev/null ;;  # Debian strips ensurepip
    ffmpeg) have ffmpeg && have ffprobe ;;
    espeak-ng | redis-server | chromium | wrk | curl) have "$1" ;;
    libatomic1) lib libatomic.so.1 ;;  # Playwright's Node.js driver links it
    postgresql) pg_bin ;;  # initdb and pg_ctl: tests start private clusters
    iproute2) have ip && have tc ;;  # ip netns, veth, tc: the multi-host tests
    *) echo "system-deps.sh: unknown need '$1'" >&2; exit 2 ;;
  esac
}
package() {
  case "$1" in
    venv)
      local version
      version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      if [ "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
           = "$version" ]; then echo python3-venv; else echo "python$version-venv"; fi ;;
    *) echo "$1" ;;
  esac
}

missing=()
for need in "$@"; do
  present "$need" || missing+=("$(package "$need")")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
line="apt-get install -y --no-install-recommends ${missing[*]}"

if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp -t vidpipe-apt.XXXXXX)  # apt's and debconf's chatter, shown only on failure
  if ! { apt-get update -qq && apt-get install -qq -y --no-install-recommends "${missing[@]}"; } \
       >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "system-deps.sh: installing ${missing[*]} failed (above: apt-get's output)" >&2
    exit 1
  fi
  rm -f "$log"
elif have apt-get; then
  echo "vidpipe needs these Debian packages; as root, run:" >&2
  echo "  $line" >&2
  exit 1
else
  echo "vidpipe needs what these Debian packages provide: ${missing[*]}" >&2
  exit 1
fi
