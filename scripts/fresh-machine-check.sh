#!/usr/bin/env bash
# Proves the README's promise on a fresh Debian 12: in a minimal root made by
# `debootstrap --variant=minbase bookworm`, where only python3, make, git and ca-certificates
# are installed (as a new user would), `make run` comes up and processes a real file through
# the API, and `make test` passes. Not part of `make test` (15-30 minutes); run it as root
# whenever setup changes, and put its last lines in the closing note.
#
#   scripts/fresh-machine-check.sh [REPO [REF]]   default: this repository and its HEAD
#
# Only committed work is checked (the root gets a clone). Passed on into the root when set:
# PORT (5000), WORKERS, REDIS_URL, TEST_REDIS_URL, TEST_POSTGRES_URL, PYTEST_ARGS.
# DEBIAN_MIRROR overrides the mirror debootstrap uses; TMPDIR where the root is made (~4 GB).
#
# Inside the root the network is the host's: `make test` there uses the host's PostgreSQL
# and Redis. The package registries are reached with the host's apt configuration, its pip
# configuration and its CA certificates (this machine's network presents its own certificate
# authority), all mounted read-only. Whatever happens (failure, Ctrl-C, TERM), everything is
# cleaned up: the processes running in the root, its mounts, the folder.
set -euo pipefail

repo=$(git -C "${1:-$(dirname "$0")}" rev-parse --show-toplevel)
sha=$(git -C "$repo" rev-parse --verify "${2:-HEAD}^{commit}")
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
port="${PORT:-5000}"
api="http://127.0.0.1:$port"
started=$SECONDS
work="" root=""

say() { printf '%s %s\n' "$(date +%T)" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
tail_of() { echo "--- last lines of $(basename "$1"):" >&2; tail -n "${2:-40}" "$1" >&2; }

# --- cleanup: processes in the root, then its mounts, then the folder ---------------------

root_pids() {  # the processes whose root directory is the fresh root (or below it)
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    case "$r" in "$root" | "$root"/*) echo "${p#/proc/}" ;; esac
  done
}

stop_root_processes() {
  local sig pids
  for sig in TERM TERM KILL KILL; do
    pids=$(root_pids)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -s "$sig" $pids 2>/dev/null
    sleep 3
  done
  [ -z "$(root_pids)" ]
}

mounts_under() {  # mount points at or below $work, deepest first
  awk -v w="$work" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r
}

cleanup() {
  local rc=$? m left=""
  set +e
  trap - EXIT INT TERM
  if [ -n "$work" ]; then
    [ -n "$root" ] && { stop_root_processes || left="processes $(root_pids | xargs)"; }
    for m in $(mounts_under); do umount "$m" 2>/dev/null || umount -l "$m"; done
    if [ -n "$(mounts_under)" ]; then
      left="$left mounts $(mounts_under | xargs)"
    fi
    if [ -z "$left" ]; then
      rm -rf --one-file-system "$work"
      [ -e "$work" ] && left="folder $work"
    fi
  fi
  local took=$(( SECONDS - started ))
  if [ -n "$left" ]; then
    say "fresh-machine-check: cleanup INCOMPLETE, left behind: $left (nothing removed)" >&2
    rc=1
  elif [ -n "$work" ]; then
    say "fresh-machine-check: cleaned up: no process, mount or folder of the check is left"
  fi
  if [ "$rc" = 0 ]; then
    say "fresh-machine-check: PASSED in $(( took / 60 )) min $(( took % 60 )) s"
  else
    say "fresh-machine-check: FAILED (exit $rc) after $(( took / 60 )) min $(( took % 60 )) s" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the host ------------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, mount and chroot need it)"
for tool in debootstrap curl; do
  command -v "$tool" >/dev/null && continue
  say "installing $tool on the host"
  DEBIAN_FRONTEND=noninteractive apt-get install -qq -y "$tool" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -qq -y "$tool"; } \
      >/dev/null
done
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  die "port $port is taken: set PORT to a free one"
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vidpipe-fresh.XXXXXX")
root="$work/root"
mkdir "$root"
say "fresh-machine-check of $repo at $(git -C "$repo" log -1 --format='%h (%s)' "$sha" | cut -c1-90)"
say "in $root"

# --- a minimal Debian 12 with python3 make git ca-certificates ----------------------------

say "debootstrap --variant=minbase bookworm ($mirror)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail_of "$work/debootstrap.log"; die "debootstrap"; }

# As on a machine booted from it, the root is a mount point and /run a tmpfs: `ip netns`
# (the multi-host tests) keeps its namespaces in /run/netns and makes "/" a slave mount.
mount --bind "$root" "$root"
mount -t tmpfs -o mode=0755 run "$root/run"

bind_ro() {  # host path -> the same path in the root, read-only
  if [ -d "$1" ]; then mkdir -p "$root$1"; else mkdir -p "$(dirname "$root$1")"; touch "$root$1"; fi
  mount --bind -o ro "$1" "$root$1"
}
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --bind /dev/pts "$root/dev/pts"  # apt and dpkg log through a pseudo-terminal
mount -t tmpfs -o mode=1777 shm "$root/dev/shm"  # POSIX shared memory: Chromium, multiprocessing
bind_ro /etc/resolv.conf
bind_ro /etc/hosts
# apt: the host's configuration is the read-only lower layer; what packages write there
# (postgresql-common adds to apt.conf.d) lands in an upper layer inside the check's folder.
mkdir -p "$work/apt-upper" "$work/apt-work"
mount -t overlay overlay \
  -o "lowerdir=/etc/apt,upperdir=$work/apt-upper,workdir=$work/apt-work" "$root/etc/apt"

inside=(env -i HOME=/root LANG=C.UTF-8 TERM=dumb
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for var in PORT WORKERS REDIS_URL TEST_REDIS_URL TEST_POSTGRES_URL PYTEST_ARGS; do
  [ -n "${!var:-}" ] && inside+=("$var=${!var}")
done
in_root() { chroot "$root" "${inside[@]}" "$@"; }

say "apt-get install python3 make git ca-certificates (all a user installs)"
in_root sh -c 'apt-get update -q && apt-get install -y python3 make git ca-certificates' \
  >"$work/user-install.log" 2>&1 || { tail_of "$work/user-install.log"; die "apt-get install"; }

bind_ro /etc/ssl/certs/ca-certificates.crt
for conf in /etc/pip.conf /etc/xdg/pip; do  # system-wide pip configuration, where there is one
  [ -e "$conf" ] && bind_ro "$conf"
done

git clone --quiet --no-checkout --no-hardlinks "$repo" "$root/root/vidpipe"
git -C "$root/root/vidpipe" checkout --quiet --detach "$sha"

# Setup must print nothing misleading: no warning, no deprecation, no missing file.
quiet_setup() {  # log, the line where setup ends
  local noisy
  noisy=$(sed "/$2/q" "$1" | grep -inE 'warn|deprecat|no such file' || true)
  [ -z "$noisy" ] || { echo "$noisy" >&2; die "$3 printed the lines above while setting up"; }
}

# --- make run: up, then one real file through the API --------------------------------------

say "make run"
t0=$SECONDS
setsid chroot "$root" "${inside[@]}" make -C /root/vidpipe run >"$work/make-run.log" 2>&1 \
  </dev/null &
run_pid=$!
until curl -sf -o /dev/null --max-time 5 "$api/healthz"; do
  kill -0 "$run_pid" 2>/dev/null || { tail_of "$work/make-run.log"; die "make run stopped"; }
  (( SECONDS - t0 < ${RUN_TIMEOUT:-1200} )) ||
    { tail_of "$work/make-run.log"; die "/healthz did not answer within ${RUN_TIMEOUT:-1200} s"; }
  sleep 2
done
up=$(( SECONDS - t0 ))
quiet_setup "$work/make-run.log" 'honcho start' "make run"
say "make run: /healthz answers after $up s: $(curl -s "$api/healthz")"

json() {  # an expression of `data`, the JSON document on stdin (the root's own python3)
  in_root python3 -c 'import json, sys; data = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}
in_root ffmpeg -nostdin -hide_banner -loglevel error -y \
  -f lavfi -i testsrc2=size=640x360:rate=25:duration=6 -f lavfi -i sine=frequency=440:duration=6 \
  -shortest -c:v libx264 -pix_fmt yuv420p -c:a aac /tmp/sample.mp4
video=$(curl -sf -F file=@"$root/tmp/sample.mp4" "$api/api/v1/videos" | json 'data["id"]') ||
  die "upload refused"
curl -sf -X POST "$api/api/v1/videos/$video/run_sync" | json 'data["task_id"]' >/dev/null ||
  die "run_sync refused"
t1=$SECONDS
while :; do
  status=$(curl -sf "$api/api/v1/videos/$video/reprocess" | json 'data["status"]') ||
    status="unreadable"
  case "$status" in
    completed) break ;;
    failed | cancelled)
      curl -s "$api/api/v1/videos/$video/reprocess" >&2; echo >&2; die "processing $status" ;;
  esac
  (( SECONDS - t1 < 600 )) || die "processing still $status after 600 s"
  sleep 1
done
artifacts=$(curl -sf "$api/api/v1/videos/$video/artifacts" |
            json '" ".join(sorted(a["name"] for a in data))')
for name in audio.wav transcript.json captions.vtt captions.srt poster.jpg storyboard.jpg \
            storyboard.vtt preview.mp4; do
  [[ " $artifacts " == *" $name "* ]] || die "no $name among the outputs: $artifacts"
done
curl -sf -o "$root/tmp/preview.mp4" "$api/api/v1/videos/$video/artifacts/preview.mp4"
preview=$(in_root ffprobe -v error -show_entries format=duration -of csv=p=0 /tmp/preview.mp4)
say "make run: sample.mp4 (6 s) processed in $(( SECONDS - t1 )) s, status completed;" \
    "outputs: $artifacts; preview.mp4 plays $preview s"

others() {  # what runs in the root, but a redis-server that ensure-redis.sh left on purpose
  local pids
  pids=$(root_pids | xargs)
  [ -z "$pids" ] || ps -o pid=,args= -p "${pids// /,}" | grep -v ' redis-server ' || true
}
kill -INT -- "-$run_pid"  # Ctrl-C, as in a terminal
for _ in $(seq 60); do kill -0 "$run_pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$run_pid" 2>/dev/null || [ -n "$(others)" ]; then
  tail_of "$work/make-run.log" 20; die "make run did not stop on Ctrl-C within 60 s"
fi
wait "$run_pid" 2>/dev/null || true
say "make run: stopped on Ctrl-C, no process left"

# --- make test -----------------------------------------------------------------------------

say "make test"
t2=$SECONDS
set +e
in_root make -C /root/vidpipe test </dev/null 2>&1 | tee "$work/make-test.log"
test_rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' "$work/make-test.log" |
          tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
[ "$test_rc" = 0 ] || die "make test exited $test_rc: ${summary:-no pytest summary}"
quiet_setup "$work/make-test.log" 'pytest' "make test"
say "make test: ${summary:-passed} ($(( SECONDS - t2 )) s with setup)"
left=$(others)
say "make test: ${left:+left running: }${left:-no process left}"
