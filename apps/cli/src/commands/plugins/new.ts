import { resolve } from 'node:path';
import { Args, Flags } from '@oclif/core';
import type { z } from '@berth/core/zod';
import { BerthError } from '@berth/core/errors';
import { BaseCommand } from '../../base-command.js';
import { renderPluginTemplate, transportNameFor, writePluginFiles, zPluginPackageName, zTransportName } from '../../plugin-template.js';

/** `berth plugins new`: a new transport plugin package whose conformance test passes as written. */
export default class PluginsNew extends BaseCommand<typeof PluginsNew> {
  static override summary = 'Create a transport plugin package';
  static override description = [
    'Write a new berth transport plugin package: package.json (with the "berth" and "oclif" fields',
    '`berth plugins install` needs), tsconfig.json, src/index.ts (a working transport that connects',
    'file volumes as loop devices with 4096-byte sectors: replace its losetup calls with your tool\'s)',
    'and src/index.test.ts (berth\'s transport conformance suite, which it passes as written, as root).',
    'It is the plugin of the root README\'s "Writing a transport plugin".',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> <%= command.id %> berth-transport-nbd',
    '<%= config.bin %> <%= command.id %> @acme/berth-transport-rbd --transport rbd --dir ./rbd',
  ];

  static override args = {
    name: Args.string({ description: 'npm package name of the plugin', required: true }),
  };

  static override flags = {
    dir: Flags.string({ description: 'Directory to create (default: ./<name without its scope>)' }),
    transport: Flags.string({ description: 'Transport name (default: the package name without a berth-transport- prefix)' }),
  };

  async run(): Promise<{ package: string; transport: string; dir: string; files: string[] }> {
    const packageName = parse(zPluginPackageName, this.args.name, 'plugin package name', 'berth-transport-nbd');
    const transport = parse(zTransportName, this.flags.transport ?? transportNameFor(packageName), 'transport name', 'nbd');
    const dir = resolve(this.flags.dir ?? packageName.replace(/^@[^/]+\//, ''));
    const files = await renderPluginTemplate(packageName, transport);
    await writePluginFiles(dir, files);
    this.log(`Created ${packageName} (transport ${transport}) in ${dir}:`);
    for (const file of files.keys()) this.log(`  ${file}`);
    this.log('');
    this.log('Next:');
    this.log(`  cd ${dir} && npm install    # @berth/* from the registry, or from the tarballs of berth's \`npm run berth:pack\``);
    this.log('  npm test                   # the transport conformance suite, on real loop devices (as root)');
    this.log(`  npm pack && berth plugins install ./${packageName.replace(/^@/, '').replace('/', '-')}-0.1.0.tgz`);
    return { package: packageName, transport, dir, files: [...files.keys()] };
  }
}

function parse<S extends z.ZodType>(schema: S, value: string, what: string, example: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  throw new BerthError('VALIDATION', `invalid ${what} "${value}": ${result.error.issues.map((issue) => issue.message).join('; ')}`, {
    hint: `for example \`berth plugins new ${example}\``,
  });
}
