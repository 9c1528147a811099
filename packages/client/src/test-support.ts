import { BerthError } from '@berth/core';

/** The code of the BerthError `promise` rejects with, or `no error`. */
export async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (BerthError.is(error)) return error.code;
    throw error;
  }
  return 'no error';
}
