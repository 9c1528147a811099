import { Flags, ux } from '@oclif/core';
import { API_LISTEN_ENV, API_TOKEN_ENV, closeOnSignal, startApiServer } from '@berth/api';
import { BaseCommand } from '../base-command.js';

/** `berth serve`: run the HTTP API on this host's berth until SIGTERM or SIGINT. */
export default class Serve extends BaseCommand<typeof Serve> {
  static override longRunning = true;
  static override summary = 'Run the berth HTTP API';
  static override description = [
    'Run the berth HTTP API (the same pipelines over REST, with operations to poll, OpenAPI at',
    '/openapi.json, docs at /docs and Prometheus metrics at /metrics) on this host\'s berth: the same',
    'data dir, config and plugins as the other commands. Clients authenticate with bearer tokens from',
    `the config's api.tokens (stored as SHA-256); with none configured it refuses to start unless`,
    `${API_TOKEN_ENV} holds an admin token. SIGTERM or SIGINT stops it gracefully: no new requests, the`,
    'operations in flight finish, then the store is closed.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --listen 127.0.0.1:8776',
    `${API_TOKEN_ENV}=$(openssl rand -hex 32) <%= config.bin %> <%= command.id %> --listen 0.0.0.0:8776`,
  ];

  static override flags = {
    listen: Flags.string({
      description: `host:port to listen on [env: ${API_LISTEN_ENV}; default: the config's api.listen, 127.0.0.1:8776]`,
    }),
  };

  async run(): Promise<{ url: string; stopped: true }> {
    if (this.flags.api !== undefined && this.flags.api !== '') {
      // Often just BERTH_API_URL left in the shell for the client commands: say so, and serve.
      ux.stderr(`Warning: berth serve runs the API itself and ignores --api/BERTH_API_URL (${this.flags.api})`);
    }
    const server = await startApiServer({
      ...this.openBerthOptions(),
      ...(this.flags.listen === undefined ? {} : { listen: this.flags.listen }),
    });
    // On stderr, also with --json: a script that asked for port 0 reads the URL from this line.
    ux.stderr(`berth API listening on ${server.url} (docs: ${server.url}/docs)`);
    await closeOnSignal(server, (signal) => ux.stderr(`${signal}: finishing requests and operations in flight, then stopping`));
    this.log('berth API stopped');
    return { url: server.url, stopped: true };
  }
}
