"""One os-brick attach/detach cycle on a berth simulated host, timed inside the process.

Started by berth's bench `os-brick-side-by-side` (bench/src/os-brick-side-by-side.ts) as
`unshare --mount -- /usr/bin/python3 os-brick-cycle.py ROOT VOLUMES_JSON MULTIPATH LOCK_DIR`.
In its private mount namespace (never the host's) it binds the simulated root's sys/, dev/ and
etc/iscsi/ over /sys, /dev and /etc/iscsi, connects every volume of VOLUMES_JSON (a list of
os-brick connection properties) at once with an unmodified ISCSIConnector, then disconnects them
all at once, and prints the two wall-clock times in ms as one JSON line. Python's start and
os-brick's import are not timed.
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from os_brick_root import bind_simulated_root, iscsi_connector  # noqa: E402

root, volumes_json, multipath_arg, lock_dir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
bind_simulated_root(root)
volumes = json.loads(volumes_json)
connector = iscsi_connector('berth-os-brick-bench', lock_dir, multipath_arg == '1')

with ThreadPoolExecutor(max_workers=len(volumes)) as pool:
    started = time.monotonic()
    devices = list(pool.map(connector.connect_volume, volumes))
    connect_ms = (time.monotonic() - started) * 1000
    started = time.monotonic()
    list(pool.map(lambda pair: connector.disconnect_volume(pair[0], pair[1]), zip(volumes, devices)))
    disconnect_ms = (time.monotonic() - started) * 1000

print(json.dumps({'connect_ms': connect_ms, 'disconnect_ms': disconnect_ms, 'paths': [d['path'] for d in devices]}))
