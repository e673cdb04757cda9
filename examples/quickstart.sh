#!/bin/sh
# hostctl's main job on the embedded default, in a throw-away home: save a server, a
# platform and a site, queue tasks, run them through the real queue, show what happened.
# Run from the repository: sh examples/quickstart.sh
set -eu
HOSTCTL_HOME=$(mktemp -d "${TMPDIR:-/tmp}/hostctl-demo.XXXXXX")
export HOSTCTL_HOME
mkdir -p "$HOSTCTL_HOME/www/app"
cat > "$HOSTCTL_HOME/config.toml" <<'TOML'
# a command task type: an argv template, never a shell string built from user data
[tasks.hello]
command = ["echo", "hello from {uri} on platform root {root}"]
context_types = ["site"]
TOML
echo "home: $HOSTCTL_HOME"
set -x
hostctl provision-save @server_master --context_type server --db_service_type sqlite
hostctl provision-save @platform_app --context_type platform --root "$HOSTCTL_HOME/www/app" \
    --web_server @server_master
hostctl provision-save @example.com --context_type site --platform @platform_app \
    --db_server @server_master --aliases www.example.com
hostctl context list
hostctl task add verify @server_master
hostctl task add verify @example.com --context-option language=fr
id=$(hostctl task add hello @example.com)
hostctl task list
hostctl wait-queue --once          # what cron's `hostctl dispatch` or the daemon does
hostctl task list
hostctl task log "$id"
hostctl context show @example.com
hostctl queue status
