#!/bin/sh
# The one-shot set-up of compose.yaml's example deployment, run as root by its
# `init` service: two witness keys, the prover's data directory on PostgreSQL
# with both witnesses in its config.toml, and each witness given the log's
# verifier key; then everything handed to the image's user `solvency`.
# Once done (marker file) it does nothing. If a first run was interrupted, it
# refuses: start again from empty volumes (docker compose down -v).
set -eu

: "${DATABASE_URL:?set DATABASE_URL}"
ORIGIN=${ORIGIN:-compose.example/solvency}
ASSETS=${ASSETS:-BTC:8,ETH:9,USDT:6}
root=${PROVER_VOLUME:-/var/lib/solvency}    # the prover's volume
wroot=${WITNESS_VOLUMES:-/witnesses}        # $wroot/N: witness N's volume
owner=${OWNER:-solvency:solvency}           # the image's user
data=$root/prover                           # the prover's data directory
done_marker=$root/compose-init.done
witnesses="1 2"

if [ -e "$done_marker" ]; then
    echo "already set up: $(cat "$data/verifier.pub")"
    exit 0
fi
if [ -e "$data" ] || [ -e "$wroot/1/witness.key" ] || [ -e "$wroot/2/witness.key" ]; then
    echo "error: an earlier set-up was interrupted: docker compose down -v, then up again" >&2
    exit 1
fi
umask 077
out=$(mktemp)

for n in $witnesses; do
    solvency-verify witness-key --name "compose.example/w$n" --out "$wroot/$n/witness.key" > "$out"
    tail -n 1 "$out" > "$wroot/$n/witness.pub"
done

solvency-prover --database-url "$DATABASE_URL" --data-dir "$data" \
    init --origin "$ORIGIN" --assets "$ASSETS" > "$out"
tail -n 1 "$out" > "$data/verifier.pub"

for n in $witnesses; do
    cp "$data/verifier.pub" "$wroot/$n/log.vkey"
    printf '\n[[witnesses]]\nkey = "%s"\nurl = "http://witness%s:7380"\n' \
        "$(cat "$wroot/$n/witness.pub")" "$n" >> "$data/config.toml"
done

rm -f "$out"
chown -R "$owner" "$root" "$wroot/1" "$wroot/2"
chmod 0700 "$root" "$wroot/1" "$wroot/2"
touch "$done_marker"
echo "verifier key (give it to users and auditors): $(cat "$data/verifier.pub")"
for n in $witnesses; do
    echo "witness $n: $(cat "$wroot/$n/witness.pub")"
done
