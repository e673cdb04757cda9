#!/bin/sh
# hostctl's main job on the embedded default (SQLite: no database server), in a
# throw-away folder: a server, a platform (a tiny application with its hostctl-app.toml)
# and a site, installed through the real queue, then shown answering over HTTP.
# With nginx on PATH (or /usr/sbin/nginx), a private nginx on a free loopback port
# serves it and is stopped at the end; without it the site is still installed (files,
# database, vhost) and nginx is only needed to see it answer.
# Run from the repository: sh examples/quickstart.sh
set -eu
DEMO=$(mktemp -d "${TMPDIR:-/tmp}/hostctl-demo.XXXXXX")
chmod 755 "$DEMO"   # the web server's workers read the platform below it
HOSTCTL_HOME=$DEMO/home
export HOSTCTL_HOME
APP=$DEMO/www/app
mkdir -p "$APP"

# the application: its manifest says what the web server serves and how a site installs
cat > "$APP/hostctl-app.toml" <<'TOML'
format = 1
[web]
root = "{site_path}/public"
[commands]
install = ["python3", "{root}/install.py"]
TOML
cat > "$APP/install.py" <<'PY'
import os, sqlite3
site, db = os.environ["HOSTCTL_FIELD_SITE_PATH"], os.environ["DB_PATH"]
with sqlite3.connect(db) as con:  # the site's own database, made by hostctl
    con.execute("CREATE TABLE visits (at TEXT)")
os.makedirs(f"{site}/public", exist_ok=True)
with open(f"{site}/public/index.html", "w") as fh:
    fh.write(f"<h1>Welcome to {os.environ['HOSTCTL_FIELD_URI']}</h1>\n"
             f"<p>its database: {os.environ['DB_TYPE']} {os.environ['DB_NAME']}</p>\n")
print("installed", os.environ["HOSTCTL_FIELD_URI"])
PY
mkdir -m 700 "$HOSTCTL_HOME"
cat > "$HOSTCTL_HOME/config.toml" <<'TOML'
# a command task type: an argv template, never a shell string built from user data
[tasks.hello]
command = ["echo", "hello from {uri} on platform root {root}"]
context_types = ["site"]
TOML
echo "home: $HOSTCTL_HOME"

NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
WEB="--http_service_type nginx"
if [ -n "$NGINX" ]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    CONF=$DEMO/nginx/nginx.conf
    mkdir -p "$DEMO/nginx/tmp"
    USER_LINE=""
    if [ "$(id -u)" = 0 ]; then USER_LINE="user nobody $(id -gn nobody);"; fi
    cat > "$CONF" <<CONF
$USER_LINE
worker_processes 1;
pid $DEMO/nginx/nginx.pid;
error_log $DEMO/nginx/error.log;
events { worker_connections 64; }
http {
    access_log off;
    server_names_hash_bucket_size 256;
    default_type text/html;
    client_body_temp_path $DEMO/nginx/tmp/body;
    proxy_temp_path $DEMO/nginx/tmp/proxy;
    fastcgi_temp_path $DEMO/nginx/tmp/fastcgi;
    uwsgi_temp_path $DEMO/nginx/tmp/uwsgi;
    scgi_temp_path $DEMO/nginx/tmp/scgi;
    include $HOSTCTL_HOME/config/server_master/nginx/vhost.d/*.conf;
}
CONF
    "$NGINX" -c "$CONF"
    # stop it at the end, and wait until it is gone: `nginx -s stop` only signals it
    stop_nginx() {
        master=$(cat "$DEMO/nginx/nginx.pid" 2>/dev/null || true)
        "$NGINX" -c "$CONF" -s stop 2>/dev/null || true
        tries=0
        while [ -n "$master" ] && kill -0 "$master" 2>/dev/null && [ "$tries" -lt 200 ]; do
            sleep 0.05
            tries=$((tries + 1))
        done
    }
    trap stop_nginx EXIT
    echo "nginx: $NGINX on 127.0.0.1:$PORT"
    WEB="$WEB --http_port $PORT --ip_addresses 127.0.0.1 --nginx_binary $NGINX --nginx_conf $CONF"
fi

set -x
# shellcheck disable=SC2086  # WEB is a list of options
hostctl provision-save @server_master --context_type server --db_service_type sqlite $WEB
hostctl provision-save @platform_app --context_type platform --root "$APP" \
    --web_server @server_master
hostctl provision-save @example.com --context_type site --platform @platform_app \
    --db_server @server_master --aliases www.example.com
hostctl context list
hostctl task add verify @server_master
install=$(hostctl task add install @example.com)
hostctl task add hello @example.com
hostctl task list
hostctl wait-queue --once          # what cron's `hostctl dispatch` or the daemon does
hostctl task list
hostctl task log "$install"
hostctl provision-backup @example.com    # a task in the foreground
hostctl context show @example.com
hostctl queue status
set +x

if [ -n "$NGINX" ]; then
    echo "fetching http://example.com/ from 127.0.0.1:$PORT:"
    if command -v curl >/dev/null; then
        curl -sS -w 'HTTP %{http_code}\n' -H 'Host: example.com' "http://127.0.0.1:$PORT/"
    else
        python3 - "$PORT" <<'PY'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/", headers={"Host": "example.com"})
with urllib.request.urlopen(req) as res:
    print(res.read().decode(), end="")
    print("HTTP", res.status)
PY
    fi
else
    echo "the site is installed; nginx is needed to see it answer (apt install nginx)"
fi
