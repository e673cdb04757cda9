#!/bin/sh
# Make a hostctl platform from a WordPress tree (default: Debian's wordpress package):
#   sh examples/wordpress/make-platform.sh DEST [WORDPRESS]
# DEST gets a copy of the WordPress tree (its links kept as links) but its wp-config.php
# and .htaccess, then this folder's wp-config.php (every value from the site's settings)
# and hostctl-app.toml. A copy, not links: WordPress finds its configuration beside its
# own files (ABSPATH is where wp-load.php really is).
set -eu
dest=${1:?usage: make-platform.sh DEST [WORDPRESS]}
wordpress=${2:-/usr/share/wordpress}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$wordpress/wp-settings.php" ] || { echo "$wordpress is not a WordPress tree" >&2; exit 2; }
[ ! -e "$dest" ] || { echo "$dest exists already" >&2; exit 2; }
mkdir -p "$dest"
chmod 755 "$dest"
cp -a "$wordpress/." "$dest/"
rm -f "$dest/wp-config.php" "$dest/.htaccess"
cp "$here/wp-config.php" "$here/hostctl-app.toml" "$dest/"
chmod 644 "$dest/wp-config.php" "$dest/hostctl-app.toml"
echo "$dest: a WordPress platform (from $wordpress)"
