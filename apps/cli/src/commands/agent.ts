import { stat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Flags, ux } from '@oclif/core';
import { BerthError } from '@berth/core/errors';
import { apiUrls, BaseCommand } from '../base-command.js';

/** Read the agent token: a file only its owner may read (a token is a credential), never printed. */
async function readTokenFile(file: string): Promise<string> {
  let mode: number;
  let text: string;
  try {
    mode = (await stat(file)).mode;
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new BerthError('CONFIG', `cannot read the agent token file ${file}`, { cause: error, hint: 'check the path given with --token-file' });
  }
  if ((mode & 0o044) !== 0) {
    throw new BerthError('CONFIG', `the agent token file ${file} is readable by ${(mode & 0o004) !== 0 ? 'every user' : 'its group'}`, {
      hint: `make it readable by its owner only: chmod 600 ${file}`,
    });
  }
  const token = text.trim();
  if (token === '') throw new BerthError('CONFIG', `the agent token file ${file} is empty`, { hint: 'put the agent token for this host in it' });
  return token;
}

/** `berth agent`: run this host's steps (connect, publish, ...) for the berth API until SIGTERM. */
export default class Agent extends BaseCommand<typeof Agent> {
  static override longRunning = true;
  static override summary = "Run this host's part of attaches and detaches for a berth API";
  static override description = [
    'Register this host with the berth API (its connector, its transports and consumers) and run the',
    'host steps of attaches and detaches to servers on it: connect, publish, unpublish, disconnect. It',
    'holds no database credentials: it talks only to the API, with an agent token that names this host',
    '(the config\'s api.tokens entry `{role: "agent", host: NAME}`), and it sees only its host\'s work.',
    'Work arrives by long-poll; each item runs at most until its operation\'s deadline, with its lease',
    'renewed meanwhile. Every --path-check seconds it also looks for devices whose path in use died',
    '(iscsi-user: the portal stopped answering) and moves them to a live path, and every upkeep.intervalMs',
    '(config, 5 s) it runs its transports\' upkeep (iscsi-user: a killed dead-target watcher started again',
    'while LUNs are connected). SIGTERM or SIGINT stops claiming, lets running items finish, then exits',
    '0. With several replicas and no load balancer in',
    'front, give them all: --api URL1,URL2 — when the one in use cannot be reached, is stopping or stays',
    'silent, the agent goes on with the next.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> --api https://controller:8776 --token-file /etc/berth/agent.token',
    'BERTH_API_URL=http://10.0.0.1:8776 <%= config.bin %> <%= command.id %> --token-file ./agent.token --concurrency 8',
    '<%= config.bin %> <%= command.id %> --api http://10.0.0.1:8776,http://10.0.0.2:8776 --token-file /etc/berth/agent.token',
  ];
  static override enableJsonFlag = false;

  static override flags = {
    'token-file': Flags.string({ description: 'File holding this host\'s agent token (readable by its owner only)', required: true }),
    concurrency: Flags.integer({ description: 'Work items run at once', default: 4, min: 1, max: 64 }),
    'path-check': Flags.integer({
      description: 'Seconds between checks for devices on a dead path, moved to a live one (transports that can, e.g. iscsi-user); 0: never',
      default: 30,
      min: 0,
      max: 86_400,
    }),
  };

  async run(): Promise<void> {
    const api = this.flags.api;
    if (api === undefined || api === '') {
      throw new BerthError('CONFIG', 'berth agent needs the URL of the berth API', {
        hint: 'give it with --api https://controller:8776 or BERTH_API_URL',
      });
    }
    if (this.flags.store !== undefined) {
      throw new BerthError('CONFIG', 'berth agent does not open the store: it reaches the state only through the API', {
        hint: 'drop --store; give the database URL to `berth serve` on the controllers',
      });
    }
    const token = await readTokenFile(this.flags['token-file']);
    const [runtime, { AgentClient }] = await Promise.all([import('@berth/runtime'), import('@berth/client')]);
    const options = this.openBerthOptions();
    const toStderr = this.flags.verbose || process.env['BERTH_LOG_LEVEL'] !== undefined;
    const dataDir = options.dataDir ?? runtime.defaultDataDir();
    const host = await runtime.openAgent({ ...options, ...(toStderr ? {} : { logFile: join(dataDir, 'logs', 'agent.log') }) });
    // Several replicas' URLs, comma-separated: the first, then the others in turn when it is unavailable.
    const client = new AgentClient({ ...apiUrls(api), token });
    const runner = new runtime.AgentRunner({
      host,
      api: client,
      // The replica in use now (it changes when one is unavailable).
      get apiUrl() {
        return client.url;
      },
      version: this.config.version,
      concurrency: this.flags.concurrency,
      pathCheckMs: this.flags['path-check'] * 1000,
      onState: (line) => ux.stderr(`berth agent: ${line}`),
    });
    const stop = (signal: NodeJS.Signals): void => {
      ux.stderr(`berth agent: ${signal}: no new work; finishing the items running, then stopping`);
      runner.stop();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    try {
      await runner.run();
      ux.stderr('berth agent: stopped');
    } finally {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      client.close();
      await host.close();
    }
  }
}
