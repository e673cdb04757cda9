#!/bin/sh
# hostctl's main job on the embedded default, in a throw-away home: save a server, a
# platform and a site, then show them. Run from the repository: sh examples/quickstart.sh
set -eu
HOSTCTL_HOME=$(mktemp -d "${TMPDIR:-/tmp}/hostctl-demo.XXXXXX")
export HOSTCTL_HOME
echo "home: $HOSTCTL_HOME"
set -x
hostctl provision-save @server_master --context_type server --http_service_type nginx \
    --db_service_type sqlite
hostctl provision-save @platform_app --context_type platform --root "$HOSTCTL_HOME/www/app" \
    --web_server @server_master
hostctl provision-save @example.com --context_type site --platform @platform_app \
    --db_server @server_master --aliases www.example.com
hostctl context list
hostctl context show @example.com
