import type { FindMultipaths } from './dm-multipath.js';

/**
 * The `defaults` section of `multipath -t` / `multipathd show config` (libmultipath
 * `snprint_defaults`, keywords in dict.c's order, strings quoted): the 0.9.4 built-in values of
 * the keywords that matter to a multipath attach, and the configured `find_multipaths`. The real
 * dump also lists every keyword, the blacklists and the hardware table; those are left out.
 */
export function formatConfig(findMultipaths: FindMultipaths): string {
  const lines: Array<[string, string]> = [
    ['verbosity', '2'],
    ['polling_interval', '5'],
    ['max_polling_interval', '20'],
    ['reassign_maps', '"no"'],
    ['multipath_dir', '"/lib/multipath"'],
    ['path_selector', '"service-time 0"'],
    ['path_grouping_policy', '"failover"'],
    ['uid_attribute', '"ID_SERIAL"'],
    ['prio', '"const"'],
    ['prio_args', '""'],
    ['features', '"0"'],
    ['path_checker', '"tur"'],
    ['alias_prefix', '"mpath"'],
    ['failback', '"manual"'],
    ['rr_min_io', '1000'],
    ['rr_min_io_rq', '1'],
    ['max_fds', '"max"'],
    ['rr_weight', '"uniform"'],
    ['no_path_retry', '"fail"'],
    ['queue_without_daemon', '"no"'],
    ['flush_on_last_del', '"no"'],
    ['user_friendly_names', '"no"'],
    ['fast_io_fail_tmo', '5'],
    ['dev_loss_tmo', '600'],
    ['bindings_file', '"/etc/multipath/bindings"'],
    ['wwids_file', '"/etc/multipath/wwids"'],
    ['retain_attached_hw_handler', '"yes"'],
    ['detect_prio', '"yes"'],
    ['detect_checker', '"yes"'],
    ['deferred_remove', '"no"'],
    ['find_multipaths', `"${findMultipaths}"`],
    ['uxsock_timeout', '4000'],
    ['retrigger_tries', '3'],
    ['retrigger_delay', '10'],
    ['skip_kpartx', '"no"'],
    ['enable_foreign', '"NONE"'],
  ];
  return `defaults {\n${lines.map(([k, v]) => `\t${k} ${v}\n`).join('')}}\n`;
}
