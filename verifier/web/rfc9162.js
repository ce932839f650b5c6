// RFC 9162 §2.1 Merkle tree proofs over SHA-256, for the log of epochs
// (docs/PROTOCOL.md §5; verifier/rfc9162.py). Leaf hash H(0x00 || data), node hash
// H(0x01 || left || right). Indices and sizes are BigInt (a Number is converted),
// counting from 0. Each verifier computes the proof length it expects from the
// index and sizes and refuses any other length. The tree shape is also a record's
// asset map's (§4.4), with its own hashes: `node` and `empty` are then arguments.

import { FormatError, VerificationError } from "./errors.js";
import { equal, fromHex } from "./fields.js";
import { sha256 } from "./hashing.js";

/** The root of the empty tree, H(""). */
export const EMPTY_ROOT = fromHex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

export function leafHash(data) {
  return sha256(Uint8Array.of(0), data);
}

export function nodeHash(left, right) {
  return sha256(Uint8Array.of(1), left, right);
}

function bitLength(n) {
  return n === 0n ? 0 : n.toString(2).length;
}

function bitCount(n) {
  return n.toString(2).replaceAll("0", "").length;
}

function checkHashes(...hashes) {
  if (!hashes.every((h) => h instanceof Uint8Array && h.length === 32)) {
    throw new FormatError("log hashes must be 32 bytes");
  }
}

/** MTH of a list of leaf hashes (§2.1.1): pairs folded left to right, an odd
 * last node moving up unchanged, which gives the tree split at powers of two. */
export async function rootFromLeafHashes(hashes, node = nodeHash, empty = EMPTY_ROOT) {
  let level = [...hashes];
  if (level.length === 0) return empty;
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i + 1 < level.length; i += 2) next.push(await node(level[i], level[i + 1]));
    if (level.length % 2) next.push(level.at(-1));
    level = next;
  }
  return level[0];
}

/** MTH(D[0:n]) folded from PATH(n, D[0:n+1]): the roots of the complete subtrees
 * of the first n leaves, leaf side first (§11.2). */
export async function prefixRoot(lastPath) {
  checkHashes(...lastPath);
  if (lastPath.length === 0) return EMPTY_ROOT;
  let root = lastPath[0];
  for (const h of lastPath.slice(1)) root = await nodeHash(h, root);
  return root;
}

/** Check that `leaf` (a leaf hash) is at `index` in the tree of `size` with `root`
 * (§2.1.3.2). Throws VerificationError `inclusion-index`, `inclusion-proof-size` or
 * `inclusion-root-mismatch`. */
export async function verifyInclusion(leaf, index, size, proof, root, node = nodeHash) {
  [index, size] = [BigInt(index), BigInt(size)];
  checkHashes(...proof, leaf, root);
  if (index < 0n || index >= size) {
    throw new VerificationError("inclusion-index", `index ${index} is not in a log of ${size}`);
  }
  // The levels below the point where the paths to the leaf and to the last leaf
  // part, plus the left siblings above it.
  const inner = bitLength(index ^ (size - 1n));
  const expected = inner + bitCount(index >> BigInt(inner));
  if (proof.length !== expected) {
    throw new VerificationError("inclusion-proof-size", `proof has ${proof.length} hashes, want ${expected}`);
  }
  let [fn, sn, r] = [index, size - 1n, leaf];
  for (const p of proof) {
    if (sn === 0n) throw new VerificationError("inclusion-proof-size", "proof is too long");
    if (fn % 2n === 1n || fn === sn) {
      r = await node(p, r);
      while (fn % 2n === 0n && fn !== 0n) [fn, sn] = [fn >> 1n, sn >> 1n];
    } else {
      r = await node(r, p);
    }
    [fn, sn] = [fn >> 1n, sn >> 1n];
  }
  if (sn !== 0n) throw new VerificationError("inclusion-proof-size", "proof is too short");
  if (!equal(r, root)) {
    throw new VerificationError("inclusion-root-mismatch", "the inclusion proof does not lead to the root");
  }
}

function split(n) {
  return 1n << BigInt(bitLength(n - 1n) - 1);
}

function consistencyLength(oldSize, newSize) {
  let [length, m, n, complete] = [0, oldSize, newSize, true];
  while (m !== n) {
    const k = split(n);
    length += 1;
    if (m <= k) n = k;
    else [m, n, complete] = [m - k, n - k, false];
  }
  return length + (complete ? 0 : 1);
}

/** Check that the tree of `newSize` with `newRoot` extends the tree of `oldSize`
 * with `oldRoot` (§2.1.4.2). Throws VerificationError `consistency-sizes`,
 * `consistency-proof-size` or `consistency-root-mismatch`. */
export async function verifyConsistency(oldSize, newSize, oldRoot, newRoot, proof) {
  [oldSize, newSize] = [BigInt(oldSize), BigInt(newSize)];
  checkHashes(...proof, oldRoot, newRoot);
  if (oldSize < 0n || oldSize > newSize) {
    throw new VerificationError("consistency-sizes", `a log cannot shrink from ${oldSize} to ${newSize}`);
  }
  if (oldSize === 0n || oldSize === newSize) {
    if (proof.length) throw new VerificationError("consistency-proof-size", "proof must be empty");
    if (oldSize === 0n && !equal(oldRoot, EMPTY_ROOT)) {
      throw new VerificationError("consistency-root-mismatch", "old root is not the empty root");
    }
    if (oldSize === newSize && !equal(oldRoot, newRoot)) {
      throw new VerificationError("consistency-root-mismatch", `two different roots for size ${oldSize}`);
    }
    return;
  }
  let [fn, sn] = [oldSize - 1n, newSize - 1n];
  while (fn % 2n === 1n) [fn, sn] = [fn >> 1n, sn >> 1n]; // the old tree's last node a right child
  const expected = consistencyLength(oldSize, newSize);
  if (proof.length !== expected) {
    throw new VerificationError("consistency-proof-size", `proof has ${proof.length} hashes, want ${expected}`);
  }
  const items = (oldSize & (oldSize - 1n)) === 0n ? [oldRoot, ...proof] : [...proof]; // a power of two
  let fr = items[0];
  let sr = items[0];
  for (const c of items.slice(1)) {
    if (sn === 0n) throw new VerificationError("consistency-proof-size", "proof is too long");
    if (fn % 2n === 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      while (fn % 2n === 0n && fn !== 0n) [fn, sn] = [fn >> 1n, sn >> 1n];
    } else {
      sr = await nodeHash(sr, c);
    }
    [fn, sn] = [fn >> 1n, sn >> 1n];
  }
  if (sn !== 0n) throw new VerificationError("consistency-proof-size", "proof is too short");
  if (!equal(fr, oldRoot)) {
    throw new VerificationError("consistency-root-mismatch", "proof does not lead to the old root");
  }
  if (!equal(sr, newRoot)) {
    throw new VerificationError("consistency-root-mismatch", "proof does not lead to the new root");
  }
}
