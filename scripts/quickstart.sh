#!/usr/bin/env bash
# berth's main job on the embedded default (SQLite + file backend + loop transport):
# create a volume, attach it to this host through a real loop device, show where it is, detach it.
set -euo pipefail
cd "$(dirname "$0")/.."
berth() { node apps/cli/bin/run.js "$@"; }

name="quickstart-$(date +%s)"
echo "\$ berth volume create $name --size 1GiB"
berth volume create "$name" --size 1GiB
trap 'berth detach "$name" >/dev/null 2>&1 || true; berth volume delete "$name" --yes >/dev/null 2>&1 || true' EXIT
echo; echo "\$ berth attach $name"
berth attach "$name"
echo; echo "\$ berth attachment list --volume $name"
berth attachment list --volume "$name"
echo; echo "\$ berth detach $name"
berth detach "$name"
echo; echo "\$ berth volume delete $name --yes"
berth volume delete "$name" --yes
trap - EXIT
echo; echo "\$ berth doctor"
berth doctor
