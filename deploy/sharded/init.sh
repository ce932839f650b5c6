#!/bin/sh
# The one-shot set-up of deploy/sharded/compose.yaml, run as root by its
# `init` service: the prover's data directory on PostgreSQL (config.toml,
# signing key, routing key), which every role's process mounts read-only,
# with the deployment's settings (shard_bits, the NATS servers, the ledger
# stream's replicas) put in its config.toml; the auditor given the log's
# verifier key; then everything handed to the image's user `solvency`.
# Once done (marker file) it does nothing. If a first run was interrupted, it
# refuses: start again from empty volumes (docker compose down -v).
set -eu

: "${DATABASE_URL:?set DATABASE_URL}"
: "${NATS_URL:?set NATS_URL}"
ORIGIN=${ORIGIN:-compose.example/solvency}
ASSETS=${ASSETS:-BTC:8,ETH:9,USDT:6}
SHARD_BITS=${SHARD_BITS:-1}
LEDGER_REPLICAS=${LEDGER_REPLICAS:-3}
root=${PROVER_VOLUME:-/var/lib/solvency}             # the prover's volume
auditor=${AUDITOR_VOLUME:-/var/lib/solvency-auditor}  # the auditor's volume
owner=${OWNER:-solvency:solvency}                    # the image's user
data=$root/prover                                    # the prover's data directory
done_marker=$root/init.done

if [ -e "$done_marker" ]; then
    echo "already set up: $(cat "$data/verifier.pub")"
    exit 0
fi
if [ -e "$data" ] || [ -e "$auditor/log.vkey" ]; then
    echo "error: an earlier set-up was interrupted: docker compose down -v, then up again" >&2
    exit 1
fi
umask 077
out=$(mktemp)

solvency-prover --database-url "$DATABASE_URL" --data-dir "$data" \
    init --origin "$ORIGIN" --assets "$ASSETS" > "$out"
tail -n 1 "$out" > "$data/verifier.pub"

# the deployment's settings, as top-level keys: before config.toml's tables
{
    printf 'shard_bits = %s\n' "$SHARD_BITS"
    printf 'nats_url = "%s"\n' "$NATS_URL"
    printf 'ledger_replicas = %s\n\n' "$LEDGER_REPLICAS"
    cat "$data/config.toml"
} > "$out"
cat "$out" > "$data/config.toml"  # written over: config.toml keeps its mode, 0600
rm -f "$out"

cp "$data/verifier.pub" "$auditor/log.vkey"
chown -R "$owner" "$root" "$auditor"
chmod 0700 "$root" "$auditor"
touch "$done_marker"
echo "verifier key (give it to users and auditors): $(cat "$data/verifier.pub")"
echo "producers' token: ingest_token in $data/config.toml"
