#!/usr/bin/env bash
# Make sure a Redis answers at REDIS_URL; start a local one (nothing kept on disk) if none does.
set -euo pipefail
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
py="${PYTHON:-python3}"  # one that imports redis: make passes the virtualenv's
# host, port, and the URL as said here: without its password, which is for nobody's log.
read -r host port shown < <("$py" -c '
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
host = p.hostname or "127.0.0.1"
netloc = (f"[{host}]" if ":" in host else host) + (f":{p.port}" if p.port else "")
shown = u.urlunparse((p.scheme, netloc, p.path, "", "", ""))
shown = "unix://" + p.path if p.scheme == "unix" else shown  # unix:///path/to/redis.sock
print(host, p.port or 6379, shown)' "$url")

# 0: it answers; 1: nothing answers; 2: a Redis answers but refuses (a password missing or
# wrong, ...); 3: something else answers on that port. Both print what was said. Starting
# another Redis on that port cannot help then: the script tried, and said "redis-server did
# not come up" after half a minute.
ping() { "$py" -c '
import sys, redis
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, ResponseError
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except (AuthenticationError, ResponseError) as exc:
    print(str(exc).rstrip("."))
    sys.exit(4 if "db index is out of range" in str(exc).lower() else 2)
except ConnectionError:
    sys.exit(1)
except RedisError as exc:
    print(str(exc).rstrip("."))
    sys.exit(3)' "$url" 2>/dev/null; }

status=0
said=$(ping) || status=$?
case "$status" in
  0) exit 0 ;;
  2) echo "a Redis answers at $shown but refuses this REDIS_URL ($said): put its password" \
          "in REDIS_URL (redis://:PASSWORD@host:port/db), or point it at another Redis" >&2
     exit 1 ;;
  4) echo "a Redis answers at $shown but has no database of the number REDIS_URL names" \
          "($said): set one below its \`databases\` setting (16 by default, numbered from 0)" >&2
     exit 1 ;;
  3) echo "something answers at $shown, but not as Redis does ($said): is REDIS_URL's" \
          "port the Redis one?" >&2
     exit 1 ;;
esac
# A socket file or TLS: a plain redis-server on host:port would not be what REDIS_URL names
# (the script waited for it in vain; over TLS it hung, the plain Redis left running).
case "$url" in
  redis://*) ;;
  *) echo "no Redis answers at $shown, and \`make redis\` starts only a plain local one" \
          "(redis://127.0.0.1:PORT/DB): start that Redis yourself" >&2; exit 1 ;;
esac
case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) echo "Redis at $shown does not answer, and it is not local: start it yourself" >&2; exit 1 ;;
esac
command -v redis-server >/dev/null || "$(dirname "$0")/system-deps.sh" redis-server
echo "no Redis answers at $shown; starting redis-server on $host:$port"
mkdir -p /tmp/vidpipe-redis
# REDIS_URL's credentials, if it has any, are the new Redis's: without them the app was
# refused (AUTH) by a Redis that wants none, or worse, worked with one open to every local
# user. They go in a config file only this user can read (a command line is anyone's to
# read in ps), removed once redis-server has read it.
conf=$(mktemp /tmp/vidpipe-redis/auth.XXXXXX.conf)  # mode 0600
trap 'rm -f "$conf"' EXIT
"$py" -c '
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
def quoted(value):  # redis.conf: a double-quoted string, with backslash escapes
    return "\"" + "".join(chr(b) if chr(b).isalnum() and b < 128 else "\\x%02x" % b
                           for b in value.encode()) + "\""
user, password = u.unquote(p.username or ""), u.unquote(p.password or "")
if password:
    print("requirepass", quoted(password))  # the default user (redis://:PASSWORD@...)
    if user and user != "default":  # redis://NAME:PASSWORD@...: an ACL user, all rights
        print("user", quoted(user), "on", quoted(">" + password), "~* &* +@all")
elif user and user != "default":
    sys.exit("REDIS_URL names the Redis user " + repr(user) + " without a password: add "
             "it (redis://" + user + ":PASSWORD@host:port/db), or start that Redis yourself")
' "$url" > "$conf"
redis-server "$conf" --daemonize yes --bind "$host" --port "$port" --save "" \
  --appendonly no --dir /tmp/vidpipe-redis --logfile /tmp/vidpipe-redis/redis.log
for _ in $(seq 50); do ping >/dev/null && exit 0; sleep 0.1; done
echo "redis-server did not come up; see /tmp/vidpipe-redis/redis.log" >&2
exit 1
