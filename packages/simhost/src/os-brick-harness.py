"""Run an unmodified os-brick ISCSIConnector against a berth simulated host.

Started as `unshare --mount -- /usr/bin/python3 os-brick-harness.py ROOT PROPS_JSON LOCK_DIR` by
os-brick.e2e.test.ts. Inside its private mount namespace (never the host's) it bind-mounts the
simulated root's sys/, dev/ and etc/iscsi/ over /sys, /dev and /etc/iscsi, then connects and
disconnects one volume and prints what os-brick saw as one JSON line.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from os_brick_root import bind_simulated_root, iscsi_connector  # noqa: E402

root, props_json, lock_dir = sys.argv[1], sys.argv[2], sys.argv[3]
bind_simulated_root(root)

if os.environ.get('OS_BRICK_HARNESS_DEBUG'):
    import logging

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

props = json.loads(props_json)
# Several portals: os-brick's multipath connect (parallel logins, multipath -a, multipathd add path).
multipath = 'target_portals' in props
connector = iscsi_connector('berth-os-brick-harness', lock_dir, multipath)
result = {}
device = connector.connect_volume(props)
result['device'] = device
result['exists'] = os.path.exists(device['path'])
result['sessions'] = [list(s) for s in connector._get_iscsi_sessions_full()]
result['volume_paths'] = connector.get_volume_paths(props)
if multipath:
    result['dm_name'] = open('/sys/block/%s/dm/name' % os.path.basename(device['path'])).read().strip()
    result['slaves'] = sorted(os.listdir('/sys/block/%s/slaves' % os.path.basename(device['path'])))
with open(device['path'], 'r+b') as f:
    f.write(b'written by os-brick')
connector.disconnect_volume(props, device)
result['after_disconnect_exists'] = os.path.exists(device['path'])
if multipath:
    result['paths_after'] = sorted(n for n in os.listdir('/dev') if n.startswith('sd') or n.startswith('dm-'))
result['sessions_after'] = [list(s) for s in connector._get_iscsi_sessions_full()]
print(json.dumps(result))
