<?php
/*
 * WordPress's configuration on a hostctl platform: every value comes from the site's
 * settings file, which hostctl writes (readable by the site's own user alone) and names
 * in the PHP-FPM pool's environment (HOSTCTL_SETTINGS), so that one platform serves many
 * sites, each with its own database, keys and uploads.
 */
$hostctl_settings = getenv('HOSTCTL_SETTINGS');
if (!$hostctl_settings || !is_readable($hostctl_settings)) {
    header('HTTP/1.0 503 Service Unavailable');
    exit("This site's settings cannot be read.\n");
}
require $hostctl_settings;

define('DB_NAME', $hostctl['DB_NAME']);
define('DB_USER', $hostctl['DB_USER']);
define('DB_PASSWORD', $hostctl['DB_PASSWD']);
// TCP to the database server (the site's grants are for 127.0.0.1 and localhost)
define('DB_HOST', ($hostctl['DB_HOST'] === 'localhost' ? '127.0.0.1' : $hostctl['DB_HOST'])
    . ($hostctl['DB_PORT'] !== '' ? ':' . $hostctl['DB_PORT'] : ''));
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';

// the secret keys and salts: derived from the site's own random salt, kept for its life
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT',
          'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $name) {
    define($name, hash('sha256', $name . '|' . $hostctl['SITE_SALT']));
}

define('WP_HOME', $hostctl['SITE_URL']);
define('WP_SITEURL', $hostctl['SITE_URL']);
// uploads in the site's own folder, the one its PHP may write (relative to ABSPATH)
define('UPLOADS', 'sites/' . $hostctl['SITE_URI'] . '/files');
// the code is the platform's, shared by its sites: no updates or edits from the web
define('DISALLOW_FILE_MODS', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
if (isset($_SERVER['HTTP_X_FORWARDED_PROTO']) && $_SERVER['HTTP_X_FORWARDED_PROTO'] === 'https') {
    $_SERVER['HTTPS'] = 'on';
}

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
