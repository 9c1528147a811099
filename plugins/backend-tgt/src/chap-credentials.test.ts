import { describe, expect, it } from 'vitest';
import { CHAP_PASSWORD_LENGTH, newChapCredentials, randomSecret } from './chap-credentials.js';

describe('CHAP credentials', () => {
  it('makes 24-character secrets of letters and digits that start with a letter', () => {
    for (let i = 0; i < 500; i += 1) {
      const secret = randomSecret();
      expect(secret).toHaveLength(CHAP_PASSWORD_LENGTH);
      expect(secret).toMatch(/^[A-Za-z][A-Za-z0-9]{23}$/);
    }
  });

  it('never repeats a secret or a user name', () => {
    const made = Array.from({ length: 1000 }, () => newChapCredentials('berth-'));
    expect(new Set(made.map((c) => c.password)).size).toBe(1000);
    expect(new Set(made.map((c) => c.username)).size).toBe(1000);
    expect(made[0]?.username).toMatch(/^berth-[0-9a-f]{12}$/);
  });

  it('uses every character of the alphabet (no bias towards a few)', () => {
    const seen = new Set(Array.from({ length: 400 }, () => randomSecret()).join(''));
    expect(seen.size).toBe(62);
  });
});
