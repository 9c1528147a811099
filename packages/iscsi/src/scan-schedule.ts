/**
 * How long to wait for a device after each of `attempts` scans, in ms: the budget split in
 * doubling slices (1, 2, 4, …), so a device that shows up quickly is found in the first slice
 * while a lost scan is re-issued soon, and later rescans wait longer (os-brick rescans at 4, 9,
 * 16 and 25 s; here the whole schedule fits in `budgetMs`). The slices sum to `budgetMs` exactly.
 */
export function scanSlices(budgetMs: number, attempts: number): number[] {
  if (!(budgetMs >= 0) || !Number.isFinite(budgetMs)) throw new RangeError(`budgetMs must be a finite number >= 0, got ${budgetMs}`);
  if (!Number.isInteger(attempts) || attempts < 1) throw new RangeError(`attempts must be an integer >= 1, got ${attempts}`);
  const units = 2 ** attempts - 1;
  const slices: number[] = [];
  let given = 0;
  for (let i = 0; i < attempts; i++) {
    const end = i === attempts - 1 ? budgetMs : Math.round((budgetMs * (2 ** (i + 1) - 1)) / units);
    slices.push(end - given);
    given = end;
  }
  return slices;
}
