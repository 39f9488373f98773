#!/bin/sh
# Registers every /schemas/<subject>.avsc with the schema store (POST /subjects/<subject>/versions).
# Registering a schema the subject already has returns its existing id, so this is safe to re-run.
# Needs only sh, tr, sed and curl (the logpipe image has them).
set -eu
url=${SCHEMA_STORE_URL:-http://schema-store:8081}
user=${SCHEMA_STORE_USER:-admin}
password=${SCHEMA_STORE_PASSWORD:?set SCHEMA_STORE_PASSWORD}
dir=${SCHEMAS_DIR:-/schemas}
for file in "$dir"/*.avsc; do
    subject=$(basename "$file" .avsc)
    # The schema goes in a JSON string: no raw control characters, `\` and `"` escaped.
    schema=$(tr '\t\r\n' '   ' <"$file" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
    printf '{"schemaType":"AVRO","schema":"%s"}' "$schema" |
        curl -fsS -u "$user:$password" \
            -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
            --data-binary @- "$url/subjects/$subject/versions"
    echo " $subject"
done
