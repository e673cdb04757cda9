<?php
// run by hostctl as the back end, with DB_* in its environment
$t = getenv('DB_TYPE');
if ($t === 'pgsql') {
  $dsn = 'pgsql:host=' . getenv('DB_HOST') . ';port=' . getenv('DB_PORT') . ';dbname=' . getenv('DB_NAME');
} elseif ($t === 'mysql' || $t === 'mariadb') {
  $dsn = 'mysql:host=' . getenv('DB_HOST') . ';port=' . getenv('DB_PORT') . ';dbname=' . getenv('DB_NAME');
} else { $dsn = 'sqlite:' . getenv('DB_PATH'); }
$db = new PDO($dsn, getenv('DB_USER'), getenv('DB_PASSWD'), [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$key = $t === 'pgsql' ? 'SERIAL PRIMARY KEY' : ($t === 'sqlite' ? 'INTEGER PRIMARY KEY' : 'INT AUTO_INCREMENT PRIMARY KEY');
if (($argv[1] ?? '') === 'cron') {
  $db->exec("INSERT INTO notes (body) VALUES ('cron ran')");
  echo "cron done\n";
  exit;
}
$db->exec("CREATE TABLE notes (id $key, body TEXT)");
$db->exec("INSERT INTO notes (body) VALUES ('installed')");
echo "installed\n";
