// Chosen assets of a record, proven through its asset map (docs/PROTOCOL.md §4.4,
// §11.2; verifier/selection.py). `checkSelection` verifies the entries a frame of
// `/roots?assets=` sends against their header, and that they prove, for each chosen
// asset, the record's entry or that it has none: entries at adjacent indices (or
// at an end of the map) enclosing where the asset would sort. Nothing is said of
// the record's other assets.

import { VerificationError } from "./errors.js";
import { verifyMapPath } from "./assetmap.js";
import { decodeEntry, recordView } from "./record.js";

/** What a header and some proven entries establish: `{header, epoch, timestampMs,
 * maxReserveAgeMs, assetCount, assets (the chosen ones the record has, sorted by
 * id), absent (the chosen ids it has not), solvent (every proven asset SOLVENT)}`. */
export function partialRecord(header, assets, absent = []) {
  const sorted = [...assets].sort((a, b) => (a.asset < b.asset ? -1 : 1));
  return recordView(header, sorted, { absent: Object.freeze([...absent]) });
}

/**
 * Verify `entries` ([{entry, index, path}]) against `header` and that they prove,
 * for each `chosen` asset id, its entry or its absence; return `partialRecord`.
 * Throws VerificationError `asset-map-mismatch` (a map path) or
 * `asset-map-incomplete` (a chosen asset neither proven present nor absent), or
 * FormatError (an entry proven by its map path is malformed).
 */
export async function checkSelection(header, entries, chosen) {
  const proven = new Map(); // asset -> [index, entry]
  for (const e of entries) {
    await verifyMapPath(e.entry, e.index, e.path, header.assetCount, header.assetMapRoot);
    const state = decodeEntry(e.entry, header);
    proven.set(state.asset, [BigInt(e.index), state]);
  }
  const indices = [...proven.values()];
  const present = [];
  const absent = [];
  for (const asset of [...new Set(chosen)].sort()) {
    if (proven.has(asset)) {
      present.push(proven.get(asset)[1]);
      continue;
    }
    // the last proven entry before where it would sort (-1: none), the first after
    let [low, high] = [-1n, BigInt(header.assetCount)];
    for (const [i, a] of indices) {
      if (a.asset < asset && i > low) low = i;
      if (a.asset > asset && i < high) high = i;
    }
    if (header.assetCount !== 0 && high !== low + 1n) {
      throw new VerificationError(
        "asset-map-incomplete",
        `${asset}: the entries prove neither that the record has it nor that it has not`,
      );
    }
    absent.push(asset);
  }
  return partialRecord(header, present, absent);
}
