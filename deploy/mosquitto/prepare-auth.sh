#!/bin/sh
# Entry point of the mosquitto service: make sure the password file and ACL exist (empty on the very
# first start, before the api has rendered them from the registry) and belong to uid 1883, the user
# Mosquitto drops to and the user the CareWatch image runs as, so that the api can replace them and
# signal the broker. Then exec mosquitto, which becomes PID 1 and handles SIGHUP (reload).
set -eu
AUTH_DIR="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
OWNER="${MOSQUITTO_AUTH_OWNER:-1883:1883}"
mkdir -p "$AUTH_DIR"
for f in passwd acl; do
    if [ ! -e "$AUTH_DIR/$f" ]; then
        : > "$AUTH_DIR/$f"
        chmod 0600 "$AUTH_DIR/$f"
    fi
done
chown "$OWNER" "$AUTH_DIR" "$AUTH_DIR/passwd" "$AUTH_DIR/acl"
chmod 0750 "$AUTH_DIR"
exec "$@"
