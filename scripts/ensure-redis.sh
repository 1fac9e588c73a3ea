#!/usr/bin/env bash
# Make sure a Redis answers at REDIS_URL; start a local one (nothing kept on disk) if none does.
set -euo pipefail
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
py="${PYTHON:-python3}"  # one that imports redis: make passes the virtualenv's
read -r host port < <("$py" -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 6379)' "$url")

ping() { "$py" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()' "$url" 2>/dev/null; }

ping && exit 0
case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) echo "Redis at $url does not answer, and it is not local: start it yourself" >&2; exit 1 ;;
esac
command -v redis-server >/dev/null || "$(dirname "$0")/system-deps.sh" redis-server
echo "no Redis answers at $url; starting redis-server on $host:$port"
mkdir -p /tmp/vidpipe-redis
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp/vidpipe-redis --logfile /tmp/vidpipe-redis/redis.log
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not come up; see /tmp/vidpipe-redis/redis.log" >&2
exit 1
