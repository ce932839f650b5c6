// The asset map: the Merkle tree by which a record header commits to its asset
// entries (docs/PROTOCOL.md §4.4; verifier/assetmap.py). RFC 9162's tree shape over
// the entries in record order, with hashes of its own (hashing.js): leaf
// H(0x45 || entry), node H(0x4D || left || right), the empty map H(0x4D). An
// entry's map path is RFC 9162's inclusion path at its index.

import { SolvencyError, VerificationError } from "./errors.js";
import { emptyMap, entryHash, mapNodeHash } from "./hashing.js";
import { rootFromLeafHashes, verifyInclusion } from "./rfc9162.js";

/** The asset map root over `entries` (encoded asset entries, in order). */
export async function mapRoot(entries) {
  const leaves = await Promise.all(entries.map(entryHash));
  return rootFromLeafHashes(leaves, mapNodeHash, await emptyMap());
}

/** Check that `entry` is at `index` in the asset map of `assetCount` entries with
 * `root`; else VerificationError `asset-map-mismatch`, naming what does not hold. */
export async function verifyMapPath(entry, index, path, assetCount, root) {
  try {
    await verifyInclusion(await entryHash(entry), index, assetCount, path, root, mapNodeHash);
  } catch (error) {
    if (!(error instanceof SolvencyError)) throw error;
    const detail = error instanceof VerificationError ? error.detail : error.message;
    throw new VerificationError("asset-map-mismatch", `entry ${index} of ${assetCount}: ${detail}`);
  }
}
