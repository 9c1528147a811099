"""Run an unmodified os-brick ISCSIConnector against a berth simulated host.

Started as `unshare --mount -- /usr/bin/python3 os-brick-harness.py ROOT PROPS_JSON LOCK_DIR` by
os-brick.e2e.test.ts. Inside its private mount namespace (never the host's) it bind-mounts the
simulated root's sys/, dev/ and etc/iscsi/ over /sys, /dev and /etc/iscsi, then connects and
disconnects one volume and prints what os-brick saw as one JSON line.
"""
import json
import os
import subprocess
import sys

root, props_json, lock_dir = sys.argv[1], sys.argv[2], sys.argv[3]


def mount(*args):
    subprocess.run(['mount', *args], check=True)


# The simulated /dev gets the few real character devices Python and the tools need.
for name in ('null', 'zero', 'random', 'urandom'):
    mount('--bind', '/dev/' + name, os.path.join(root, 'dev', name))
mount('--rbind', os.path.join(root, 'dev'), '/dev')
mount('--bind', os.path.join(root, 'sys'), '/sys')
mount('--bind', os.path.join(root, 'etc/iscsi'), '/etc/iscsi')

if os.environ.get('OS_BRICK_HARNESS_DEBUG'):
    import logging

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

import os_brick  # noqa: E402
from oslo_concurrency import lockutils  # noqa: E402
from oslo_config import cfg  # noqa: E402
import os_brick.privileged  # noqa: E402
from os_brick.initiator.connectors import iscsi  # noqa: E402

cfg.CONF([], project='berth-os-brick-harness', default_config_files=[])
lockutils.set_defaults(lock_path=lock_dir)
os_brick.setup(cfg.CONF)
# We are root already: os-brick's privileged calls run here instead of in a privsep daemon.
os_brick.privileged.default.set_client_mode(False)
props = json.loads(props_json)
# Several portals: os-brick's multipath connect (parallel logins, multipath -a, multipathd add path).
multipath = 'target_portals' in props
connector = iscsi.ISCSIConnector(root_helper='sudo', device_scan_attempts=3, use_multipath=multipath)
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
