// The configuration file the "create configuration" command writes.

import * as path from 'path';

export const DEFAULT_CONFIG = {
  feature: {
    network: {
      incoming: 'steal',
      outgoing: true,
      dns: true,
    },
  },
};

export function defaultConfigText(): string {
  return JSON.stringify(DEFAULT_CONFIG, null, 2) + '\n';
}

/** `<folder>/.mirrord/mirrord.json` */
export function defaultConfigPath(folder: string): string {
  return path.join(folder, '.mirrord', 'mirrord.json');
}

/** Whether a file is a mirrord configuration (what the language client's selector covers). */
export function isConfigFile(file: string): boolean {
  const base = path.basename(file);
  const dir = path.basename(path.dirname(file));
  return (dir === '.mirrord' && base.endsWith('.json')) || base.endsWith('mirrord.json');
}
