#!/usr/bin/env bash
# Print the cxrflow image tag (or full image URI) derived from pyproject.toml's [project] version.
#
#   scripts/image_tag.sh [cpu|gpu] [REGISTRY]
#     scripts/image_tag.sh            -> 0.1.0
#     scripts/image_tag.sh gpu        -> 0.1.0-gpu
#     scripts/image_tag.sh gpu REG    -> REG/cxrflow:0.1.0-gpu
#
# Same rule as cxrflow.version.image_tag/image_uri, without importing cxrflow (Cloud Build needs the
# tag before any image exists). tests/test_containers.py checks that the two agree.
set -euo pipefail

variant="${1:-cpu}"
registry="${2:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$variant" in
  cpu | gpu) ;;
  *) echo "image_tag.sh: variant must be cpu or gpu, got '$variant'" >&2; exit 2 ;;
esac

# The first `version = "..."` inside the [project] table.
version="$(awk '
  /^\[/ { in_project = ($0 == "[project]") }
  in_project && /^version[[:space:]]*=/ {
    sub(/^version[[:space:]]*=[[:space:]]*["'\'']/, ""); sub(/["'\''].*$/, ""); print; exit
  }' "$root/pyproject.toml")"
if [ -z "$version" ]; then
  echo "image_tag.sh: no [project] version in $root/pyproject.toml" >&2
  exit 1
fi

# Characters a Docker tag cannot hold (a local version's '+') become '-'.
tag="$(printf '%s' "$version" | tr -c 'A-Za-z0-9_.-' '-')"
if [ "$variant" != cpu ]; then
  tag="$tag-$variant"
fi

while [[ "$registry" == */ ]]; do
  registry="${registry%/}"
done
if [ -n "$registry" ]; then
  printf '%s/cxrflow:%s\n' "$registry" "$tag"
else
  printf '%s\n' "$tag"
fi
