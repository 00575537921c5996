#!/usr/bin/env bash
# One role and one database per service, so that a service can read and change only its own
# tables (the services never share a database: they talk over HTTP and events).
#
# The postgres image runs this once, on its first start with an empty data volume. The
# passwords come from the secret file that deploy/compose/secrets.sh wrote, one
# "<role> <password>" line per service; the same passwords are in each service's settings
# file. Changing them later means ALTER ROLE by hand, or a fresh volume
# (docker compose down -v).
set -euo pipefail

while read -r role password; do
  [[ -z "$role" || "$role" == \#* ]] && continue
  # psql's :"name" and :'value' quote the identifier and the literal, so a value never
  # becomes SQL.
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
-- Only the owner connects: another service's role cannot even open this database.
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
  echo "init-databases: database and role $role"
done < /run/secrets/postgres-service-passwords
