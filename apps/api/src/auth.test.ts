import { describe, expect, it } from 'vitest';
import { BerthError } from '@berth/core';
import { scopeOf } from './access.js';
import { hashToken, TokenTable } from './auth.js';
import { testTokenEntries, TOKENS } from './test-support.js';

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    if (BerthError.is(error)) return error.code;
    throw error;
  }
  return 'no error';
}

describe('TokenTable', () => {
  const table = TokenTable.fromConfig(testTokenEntries(), {});

  it('knows a token by its SHA-256 and returns its principal, never the token', () => {
    expect(hashToken('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(table.authenticate(`Bearer ${TOKENS.memberA}`)).toEqual({ name: 'member-a', tokenId: 'config#1', role: 'member', projectId: 'project-a' });
    expect(table.authenticate(`bearer   ${TOKENS.admin}`).role).toBe('admin');
    expect(JSON.stringify(table)).not.toContain(TOKENS.admin);
  });

  it('tells two tokens that share a name apart by their identity', () => {
    const twins = TokenTable.fromConfig(
      [
        { name: 'ci', sha256: hashToken('first-token-0123456789'), role: 'member', projectId: 'p1' },
        { name: 'ci', sha256: hashToken('second-token-0123456789'), role: 'admin' },
      ],
      { BERTH_API_TOKEN: 'third-token-0123456789' },
    );
    const ids = ['first', 'second', 'third'].map((t) => twins.authenticate(`Bearer ${t}-token-0123456789`).tokenId);
    expect(new Set(ids).size).toBe(3);
  });

  it('names the agent tokens of a host (what `DELETE /v1/hosts/{host}` says to remove), never the tokens', () => {
    expect(table.agentTokenNames('h-1')).toEqual(['agent-h1']);
    expect(table.agentTokenNames('h-2')).toEqual(['agent-h2']);
    expect(table.agentTokenNames('nowhere')).toEqual([]);
    expect(JSON.stringify(table.agentTokenNames('h-1'))).not.toContain(TOKENS.agentH1);
  });

  it('refuses a missing, malformed or unknown token alike', () => {
    for (const header of [undefined, '', 'Basic abc', 'Bearer', `Bearer ${TOKENS.admin} extra`, `Bearer ${TOKENS.admin.slice(0, -1)}`, `Bearer ${'x'.repeat(5000)}`]) {
      expect(codeOf(() => table.authenticate(header))).toBe('UNAUTHENTICATED');
    }
  });

  it('never runs open: no tokens and no BERTH_API_TOKEN is a CONFIG error', () => {
    expect(codeOf(() => TokenTable.fromConfig([], {}))).toBe('CONFIG');
    expect(codeOf(() => TokenTable.fromConfig([], { BERTH_API_TOKEN: '' }))).toBe('CONFIG');
    expect(codeOf(() => TokenTable.fromConfig([], { BERTH_API_TOKEN: 'short' }))).toBe('CONFIG');
    const fromEnv = TokenTable.fromConfig([], { BERTH_API_TOKEN: 'an-admin-token-from-the-env' });
    expect(fromEnv.authenticate('Bearer an-admin-token-from-the-env')).toEqual({ name: 'env', tokenId: 'env', role: 'admin', projectId: undefined });
  });
});

describe('scopeOf', () => {
  it('keeps a member in its project and lets admins pick one', () => {
    const member = { name: 'm', tokenId: 'config#0', role: 'member' as const, projectId: 'p1' };
    expect(scopeOf(member, undefined, 'default')).toEqual({ projectId: 'p1' });
    expect(scopeOf(member, 'p1', 'default')).toEqual({ projectId: 'p1' });
    expect(codeOf(() => scopeOf(member, 'p2', 'default'))).toBe('NOT_FOUND');
    expect(scopeOf({ name: 'm', tokenId: 'config#0', role: 'member', projectId: undefined }, undefined, 'default')).toEqual({ projectId: 'default' });
    const admin = { name: 'a', tokenId: 'config#1', role: 'admin' as const, projectId: undefined };
    expect(scopeOf(admin, undefined, 'default')).toEqual({});
    expect(scopeOf(admin, 'p2', 'default')).toEqual({ projectId: 'p2' });
  });
});
