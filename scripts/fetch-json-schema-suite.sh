#!/usr/bin/env bash
# Puts the official JSON-Schema-Test-Suite in target/json-schema-suite/ (tests/draft2020-12/
# and remotes/, the upstream layout) for tests/json_schema_suite.rs.
#
# The suite ships inside the Python `jsonschema` sdist, so it comes from PyPI through pip,
# pinned to a version and checked against its SHA-256. Idempotent: a no-op once unpacked.
# Pip override: PIP="path/to/python -m pip".
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.23.0
SHA256=d71497fef26351a33265337fa77ffeb82423f3ea21283cd9467bb03999266bc4
DEST=target/json-schema-suite
STAMP="$DEST/.from-jsonschema-$VERSION"

if [ -f "$STAMP" ]; then
    exit 0
fi

if [ -z "${PIP:-}" ]; then
    if [ -x .venv/bin/python ]; then PIP=".venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching JSON-Schema-Test-Suite (jsonschema $VERSION sdist from PyPI)"
# pip prepares the sdist's metadata, which builds it: the slow part, done once.
$PIP download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "jsonschema==$VERSION" -d "$tmp"
archive="$tmp/jsonschema-$VERSION.tar.gz"
echo "$SHA256  $archive" | sha256sum --check --quiet

rm -rf "$DEST"
mkdir -p "$DEST"
tar -xzf "$archive" -C "$DEST" --strip-components=2 \
    "jsonschema-$VERSION/json/tests/draft2020-12" "jsonschema-$VERSION/json/remotes"
touch "$STAMP"
echo "JSON-Schema-Test-Suite ready in $DEST"
