#!/usr/bin/env bash
# Make $SIEVE_WORKSPACE the DVC repository the DAG's tasks run in (README: "Where the workspace is"),
# as tests/conftest.py's make_workspace does: the image's dvc.yaml, pipeline code and .dvcignore,
# the params at /opt/sieve/params.yaml (the file compose mounts there), git init, dvc init.
# Run by the compose file's airflow-init service on every `up`, so a new image's code and the
# current params reach the workspace; data/, work/, run/, registry/ and the DVC cache stay as they are.
# SIEVE_SOURCE (default /opt/sieve, the image's copy) says where the project files come from.
# When SIEVE_DVC_REMOTE is set, it becomes the workspace's default DVC remote (for `dvc push`).
set -euo pipefail

src="${SIEVE_SOURCE:-/opt/sieve}"
ws="${SIEVE_WORKSPACE:?SIEVE_WORKSPACE must name the shared workspace folder}"
mkdir -p "$ws"
cd "$ws"

cp "$src/dvc.yaml" "$src/params.yaml" "$src/.dvcignore" .
# Replace the code whole, so a module removed from the image does not linger in the workspace.
rm -rf .pipeline.new
cp -r "$src/pipeline" .pipeline.new
find .pipeline.new -name __pycache__ -prune -exec rm -rf {} +
rm -rf pipeline
mv .pipeline.new pipeline

[ -d .git ] || git init -q
if [ ! -d .dvc ]; then
    python -m dvc init -q
    python -m dvc config core.analytics false
fi
if [ -n "${SIEVE_DVC_REMOTE:-}" ]; then
    python -m dvc remote add --force --default storage "$SIEVE_DVC_REMOTE"
fi
echo "workspace ready: $ws"
