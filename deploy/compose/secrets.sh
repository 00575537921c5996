#!/usr/bin/env bash
# Writes the secrets of the Compose stack under deploy/compose/secrets/ (git ignores them),
# so that no password sits in a committed file:
#
#   postgres-password              the PostgreSQL superuser's
#   postgres-service-passwords     "<role> <password>" per service, read once by
#                                  postgres/init-databases.sh to create roles and databases
#   <service>.toml                 each service's settings file (CONFIG_FILE): its
#                                  database_url with that password; for order, the client
#                                  secret it presents to the user service; for user, the
#                                  SHA-256 of that secret (SERVICE_CLIENTS)
#   grafana-admin-password         Grafana's "admin" user
#
# Run it once before the first `docker compose up`. It writes everything or nothing: it
# stops if only some of the files are there, since they must agree with each other and with
# what PostgreSQL was initialised with (to start over: docker compose down -v, delete the
# folder's files, run this again).
#
# The files are world-readable inside a folder only the owner may enter: Compose bind-mounts
# each file as it is (it ignores a secret's uid/gid/mode), and the containers read them as
# their own non-root users (65532, postgres, grafana).
set -eu

cd "$(dirname "$0")"
dir=secrets
services=(user product order payment notification analytics)
files=(postgres-password postgres-service-passwords grafana-admin-password)
for s in "${services[@]}"; do files+=("$s.toml"); done

present=0
for f in "${files[@]}"; do [ -e "$dir/$f" ] && present=$((present + 1)); done
if [ "$present" -eq "${#files[@]}" ]; then
  echo "secrets: all present in $(pwd)/$dir, nothing to do"
  exit 0
elif [ "$present" -ne 0 ]; then
  echo "secrets: only $present of ${#files[@]} files in $(pwd)/$dir; remove them all to write a new set" >&2
  exit 1
fi

# 24 random bytes as hex: URL-safe in database_url, TOML-safe in a basic string.
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
sha256() {
  if command -v sha256sum >/dev/null; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}

mkdir -p "$dir"
chmod 0700 "$dir"
umask 022

random >"$dir/postgres-password"
random >"$dir/grafana-admin-password"

order_secret=$(random)
order_secret_sha256=$(printf '%s' "$order_secret" | sha256)

: >"$dir/postgres-service-passwords"
for s in "${services[@]}"; do
  role="gatehouse_$s"
  password=$(random)
  echo "$role $password" >>"$dir/postgres-service-passwords"
  {
    echo "# Settings of the $s service (CONFIG_FILE), written by deploy/compose/secrets.sh."
    echo "database_url = \"postgres://$role:$password@postgres:5432/$role\""
  } >"$dir/$s.toml"
done

# The order service gets service tokens from the user service by client credentials; the
# user service keeps only the secret's digest. The permissions are order's
# SERVICE_PERMISSIONS (backends/order/src/lib.rs).
echo "service_client_secret = \"$order_secret\"" >>"$dir/order.toml"
cat >>"$dir/user.toml" <<EOF
service_clients = '[{"id":"order","secret_sha256":"$order_secret_sha256","permissions":["inventory:reserve","payments:charge","payments:refund"]}]'
EOF

chmod 0444 "$dir"/*
echo "secrets: wrote ${#files[@]} files in $(pwd)/$dir"
