// Inclusion paths of a sum tree: one leaf's path checked up to its root and
// total (docs/PROTOCOL.md §3; verifier/sumtree.py).

import { VerificationError } from "./errors.js";
import { equal } from "./fields.js";
import { MAX_BALANCE, nodeHash, subtreeCap } from "./hashing.js";

/** Recompute [root hash, root sum] from a leaf and its path of {hash, sum} siblings,
 * leaf level first (PROTOCOL §3 checks 1-4: path-length, slot-range, leaf-range,
 * sibling-sum-range). */
export async function rootFromPath(height, slot, leaf, amount, path) {
  if (path.length !== height) {
    throw new VerificationError("path-length", `path has ${path.length} steps, the tree is ${height} high`);
  }
  if (slot < 0n || slot >= 1n << BigInt(height)) {
    throw new VerificationError("slot-range", `slot ${slot} is outside a tree of height ${height}`);
  }
  if (amount < 0n || amount > MAX_BALANCE) {
    throw new VerificationError("leaf-range", `leaf amount ${amount} is outside 0..2**64-1`);
  }
  let node = leaf;
  let total = amount;
  for (const [level, step] of path.entries()) {
    if (step.sum < 0n || step.sum > subtreeCap(level)) {
      throw new VerificationError(
        "sibling-sum-range",
        `sibling sum ${step.sum} at level ${level} is outside 0..2**64-1 times 2**${level}`,
      );
    }
    node = (slot >> BigInt(level)) & 1n
      ? await nodeHash(step.hash, step.sum, node, total)
      : await nodeHash(node, total, step.hash, step.sum);
    total += step.sum;
  }
  return [node, total];
}

/** Check that `leaf` with `amount` sits at `slot` under `root`, whose sum is
 * `liabilities` (PROTOCOL §3, checks 1-6; the first that fails is thrown). */
export async function verifyPath({ height, root, liabilities, slot, leaf, amount, path }) {
  const [gotRoot, gotTotal] = await rootFromPath(height, slot, leaf, amount, path);
  if (!equal(gotRoot, root)) {
    throw new VerificationError("root-mismatch", "the path does not lead to the signed root");
  }
  if (gotTotal !== liabilities) {
    throw new VerificationError(
      "liabilities-mismatch",
      `the path sums to ${gotTotal}, the record states ${liabilities}`,
    );
  }
}
