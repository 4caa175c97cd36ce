#!/usr/bin/env bash
# Make $SIEVE_WORKSPACE the DVC repository the DAG's tasks run in (README: "Where the workspace is")
# with `python -m pipeline init`, as tests/conftest.py's make_workspace does: the image's dvc.yaml,
# pipeline code and .dvcignore, the params at /opt/sieve/params.yaml (the file compose mounts there),
# git init, dvc init, data/raw/.
# Run by the compose file's airflow-init service on every `up`, so a new image's code and the
# current params reach the workspace; data/, work/, run/, registry/ and the DVC cache stay as they are.
# SIEVE_SOURCE (default /opt/sieve, the image's copy) says where the project files come from.
# When SIEVE_DVC_REMOTE is set, it becomes the workspace's default DVC remote (for `dvc push`).
set -euo pipefail

src="${SIEVE_SOURCE:-/opt/sieve}"
ws="${SIEVE_WORKSPACE:?SIEVE_WORKSPACE must name the shared workspace folder}"

# From the source folder: python -m pipeline must run the image's code, not the workspace's copy.
(cd "$src" && python -m pipeline init "$ws" --force --source "$src" --params "$src/params.yaml")
if [ -n "${SIEVE_DVC_REMOTE:-}" ]; then
    (cd "$ws" && python -m dvc remote add --force --default storage "$SIEVE_DVC_REMOTE")
fi
echo "workspace ready: $ws"
