<?php
// the pool says which site this is, whatever name the request came by
$host = getenv('SITE_URI');
$settings = getenv('HOSTCTL_SETTINGS');
if (!is_readable($settings)) { http_response_code(500); exit("no settings for $host\n"); }
require $settings;
function db($hostctl) {
  $t = $hostctl['DB_TYPE'];
  if ($t === 'pgsql') {
    $dsn = "pgsql:host={$hostctl['DB_HOST']};port={$hostctl['DB_PORT']};"
         . "dbname={$hostctl['DB_NAME']}";
  } elseif ($t === 'mysql' || $t === 'mariadb') {
    $dsn = "mysql:host={$hostctl['DB_HOST']};port={$hostctl['DB_PORT']};"
         . "dbname={$hostctl['DB_NAME']}";
  } else { $dsn = "sqlite:{$hostctl['DB_PATH']}"; }
  return new PDO($dsn, $hostctl['DB_USER'], $hostctl['DB_PASSWD'],
                 [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
}
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
header('Content-Type: text/plain');
if ($path === '/ini') { echo ini_get($_GET['name']), "\n"; exit; }
if ($path === '/whoami') { echo posix_getpwuid(posix_geteuid())['name'], "\n"; exit; }
if ($path === '/read') {
  $data = @file_get_contents($_GET['file']);
  echo $data === false ? "DENIED\n" : "READ:" . $data; exit;
}
if ($path === '/upload') {
  $dir = __DIR__ . "/sites/$host/files";
  $ok = @file_put_contents("$dir/" . basename($_GET['name']), $_GET['text']);
  echo $ok === false ? "NOT WRITTEN\n" : "WRITTEN\n"; exit;
}
if ($path === '/add') {
  db($hostctl)->prepare('INSERT INTO notes (body) VALUES (?)')->execute([$_GET['body']]);
  echo "ADDED\n"; exit;
}
$rows = db($hostctl)->query('SELECT body FROM notes ORDER BY id')->fetchAll(PDO::FETCH_COLUMN);
echo "site $host salt ", strlen($hostctl['SITE_SALT']), " notes: ", implode(' | ', $rows), "\n";
