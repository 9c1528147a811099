"""What both os-brick scripts share: the simulated root bound over /sys, /dev and /etc/iscsi in a
private mount namespace (never the host's), and an unmodified ISCSIConnector set up as root.
Call bind_simulated_root() before importing os_brick (it reads /etc/iscsi at import)."""
import os
import subprocess


def bind_simulated_root(root):
    def mount(*args):
        subprocess.run(['mount', *args], check=True)

    # The simulated /dev gets the few real character devices Python and the tools need.
    for name in ('null', 'zero', 'random', 'urandom'):
        mount('--bind', '/dev/' + name, os.path.join(root, 'dev', name))
    # A root on a tmpfs under /dev (/dev/shm: sysfs and devtmpfs are in memory on a real host, a
    # root on disk makes every login and scan pay for file creation) would vanish, fake tools and
    # daemon socket with it, once the simulated /dev is bound over /dev: the real mount it lives
    # on is bound into the simulated /dev first, at the same place.
    real_root = os.path.realpath(root)
    parts = real_root.split('/')
    if len(parts) > 3 and parts[1] == 'dev':
        inner = os.path.join(real_root, 'dev', parts[2])
        os.makedirs(inner, exist_ok=True)
        mount('--bind', '/dev/' + parts[2], inner)
    mount('--rbind', os.path.join(root, 'dev'), '/dev')
    mount('--bind', os.path.join(root, 'sys'), '/sys')
    mount('--bind', os.path.join(root, 'etc/iscsi'), '/etc/iscsi')


def iscsi_connector(project, lock_dir, multipath):
    import os_brick
    from oslo_concurrency import lockutils
    from oslo_config import cfg
    import os_brick.privileged
    from os_brick.initiator.connectors import iscsi

    cfg.CONF([], project=project, default_config_files=[])
    lockutils.set_defaults(lock_path=lock_dir)
    os_brick.setup(cfg.CONF)
    # We are root already: os-brick's privileged calls run here instead of in a privsep daemon.
    os_brick.privileged.default.set_client_mode(False)
    return iscsi.ISCSIConnector(root_helper='sudo', device_scan_attempts=3, use_multipath=multipath)
