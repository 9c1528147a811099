import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHostFs } from '@berth/host';
import { parseInitiatorName, readInitiatorName } from './initiator-name.js';

// Debian's file as open-iscsi's postinst writes it.
const DEBIAN = `## DO NOT EDIT OR REMOVE THIS FILE!
## If you remove this file, the iSCSI daemon will not start.
## If you change the InitiatorName, existing access control lists
## may reject this initiator.  The InitiatorName must be unique
## for each iSCSI initiator.  Do NOT duplicate iSCSI InitiatorNames.
InitiatorName=iqn.1993-08.org.debian:01:6b7e2f1a9c3d
`;

describe('parseInitiatorName', () => {
  it('reads the name past the comments that mention InitiatorName', () => {
    expect(parseInitiatorName(DEBIAN)).toBe('iqn.1993-08.org.debian:01:6b7e2f1a9c3d');
  });

  it('takes the first line, as iscsid does, and trims blanks', () => {
    expect(parseInitiatorName('InitiatorName = iqn.a:1  \nInitiatorName=iqn.b:2\n')).toBe('iqn.a:1');
    expect(parseInitiatorName('#InitiatorName=iqn.old:1\nInitiatorName=iqn.new:2')).toBe('iqn.new:2');
  });

  it('has no name before Debian generates one, or when the value is empty', () => {
    expect(parseInitiatorName('GenerateName=yes\n')).toBeUndefined();
    expect(parseInitiatorName('InitiatorName=\n')).toBeUndefined();
    expect(parseInitiatorName('')).toBeUndefined();
  });
});

describe('readInitiatorName (under a host root)', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'berth-iscsi-iname-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('reads <root>/etc/iscsi/initiatorname.iscsi, never the machine\'s own', async () => {
    await mkdir(path.join(root, 'etc/iscsi'), { recursive: true });
    await writeFile(path.join(root, 'etc/iscsi/initiatorname.iscsi'), DEBIAN);
    expect(await readInitiatorName(createHostFs(root))).toBe('iqn.1993-08.org.debian:01:6b7e2f1a9c3d');
  });

  it('is undefined when the file does not exist', async () => {
    expect(await readInitiatorName(createHostFs(root))).toBeUndefined();
  });
});
