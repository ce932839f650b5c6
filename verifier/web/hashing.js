// Sum tree and asset map hashing, byte for byte as docs/PROTOCOL.md §2
// (verifier/hashing.py); user and asset ids. Digests are full SHA-256 from
// WebCrypto; amounts and sums are BigInt, encoded as u128 big-endian.
//
//   0x43 'C'  commitment   H(0x43 || u8 len || user || salt[32])
//   0x4C 'L'  user leaf    H(0x4C || u8 len || asset || commitment[32] || u128 amount)
//   0x50 'P'  padding      H(0x50 || u8 len || asset || padding_key[32] || u64 slot)
//   0x4E 'N'  node         H(0x4E || left[32] || u128 left_sum || right[32] || u128 right_sum)
//   0x45 'E'  map entry    H(0x45 || asset entry)               (the asset map, §4.4)
//   0x4D 'M'  map node     H(0x4D || left[32] || right[32]); the empty map H(0x4D)
//
// A leaf amount is at most MAX_BALANCE = 2^64 - 1, a tree at most 32 high, so a
// subtree of height l sums to at most subtreeCap(l) = 2^l * MAX_BALANCE < 2^96.

import { FormatError } from "./errors.js";
import { bigEndian, concat, show, utf8 } from "./fields.js";

export const TAG_COMMITMENT = 0x43;
export const TAG_LEAF = 0x4c;
export const TAG_PADDING = 0x50;
export const TAG_NODE = 0x4e;
export const TAG_ENTRY = 0x45;
export const TAG_MAP_NODE = 0x4d;
export const MAX_BALANCE = (1n << 64n) - 1n;
export const MAX_HEIGHT = 32;

const ASSET_ID = /^[A-Z0-9][A-Z0-9._-]{0,15}$/;
// A user id may hold no control, format (zero-width, bidi, BOM), line or paragraph
// separator, or surrogate (PROTOCOL §2.2) ...
const REFUSED_IN_USER_ID = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/u;
// ... nor begin or end with white space: Python's str.isspace() set, which
// verifier/hashing.py's strip() and checkpoint.py's key names use.
export const PYTHON_SPACE = /[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;
const NOT_PRINTABLE = /[\p{C}\p{Z}]/u; // Python's str.isprintable(), but for the space

/** SHA-256 of the concatenated byte arrays. */
export async function sha256(...parts) {
  const subtle = globalThis.crypto?.subtle;
  if (subtle === undefined) {
    throw new Error("WebCrypto (crypto.subtle) is unavailable: open the page over https or localhost");
  }
  return new Uint8Array(await subtle.digest("SHA-256", concat(...parts)));
}

export function subtreeCap(level) {
  return MAX_BALANCE << BigInt(level);
}

/** The 16-byte encoding of an amount or sum; FormatError outside 0 .. 2^128 - 1. */
export function encodeSum(value) {
  if (value < 0n || value >= 1n << 128n) {
    throw new FormatError(`amount ${value} is outside the unsigned 128-bit range`);
  }
  return bigEndian(value, 16);
}

/** An asset id (1-16 of `A-Z 0-9 . _ -`, starting alphanumeric) as its bytes. */
export function checkAssetId(asset) {
  if (typeof asset !== "string" || !ASSET_ID.test(asset)) {
    throw new FormatError(`invalid asset id ${show(asset)}: want 1-16 of A-Z 0-9 . _ -`);
  }
  return utf8(asset);
}

/** A user id (PROTOCOL §2.2) as its UTF-8 bytes: 1-255 bytes, NFC, no character of
 * category Cc, Cf, Zl, Zp or Cs, no white space at either end. */
export function checkUserId(user) {
  if (typeof user !== "string") throw new FormatError("user id must be a string");
  const raw = utf8(user, `user id "${printableId(user)}"`);
  if (raw.length < 1 || raw.length > 255) {
    throw new FormatError(`user id must be 1-255 bytes of UTF-8, got ${raw.length}`);
  }
  const refused = user.match(REFUSED_IN_USER_ID);
  if (refused !== null) {
    const code = refused[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    throw new FormatError(`user id "${printableId(user)}" contains U+${code}`);
  }
  if (PYTHON_SPACE.test(user[0]) || PYTHON_SPACE.test(user[user.length - 1])) {
    throw new FormatError(`user id "${printableId(user)}" begins or ends with white space`);
  }
  if (user.normalize("NFC") !== user) {
    throw new FormatError(`user id "${printableId(user)}" is not in Unicode form NFC`);
  }
  return raw;
}

/** `text` as a person may safely read it: every character that is not printable
 * (Unicode's Other and Separator categories but the space) and the backslash as a
 * `\x`, `\u` or `\U` escape, as verifier/hashing.py's printable_id. */
export function printableId(text) {
  let out = "";
  for (const char of text) {
    const code = char.codePointAt(0);
    if (char === "\\") out += "\\\\";
    else if (char === " " || !NOT_PRINTABLE.test(char)) out += char;
    else if (code < 0x100) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else if (code < 0x10000) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += `\\U${code.toString(16).padStart(8, "0")}`;
  }
  return out;
}

function assetPrefix(tag, asset) {
  const raw = checkAssetId(asset);
  return concat(Uint8Array.of(tag, raw.length), raw);
}

/** The commitment H(0x43 || u8 len || user || salt[32]). */
export async function commitment(user, salt) {
  const raw = checkUserId(user);
  if (salt.length !== 32) throw new FormatError(`salt must be 32 bytes, got ${salt.length}`);
  return sha256(Uint8Array.of(TAG_COMMITMENT, raw.length), raw, salt);
}

/** A user leaf's hash: binds the asset, the commitment and the balance. */
export async function leafHash(asset, userCommitment, amount) {
  if (userCommitment.length !== 32) throw new FormatError("commitment must be 32 bytes");
  if (amount < 0n || amount > MAX_BALANCE) {
    throw new FormatError(`leaf amount ${amount} is outside 0..2**64-1`);
  }
  return sha256(assetPrefix(TAG_LEAF, asset), userCommitment, encodeSum(amount));
}

/** A padding leaf's hash (sum 0). Only the prover, holding the secret key, makes
 * one; it is here for the known-answer vectors of every tag. */
export async function paddingHash(asset, paddingKey, slot) {
  if (paddingKey.length !== 32) throw new FormatError("padding key must be 32 bytes");
  if (slot < 0n || slot >= 1n << 64n) throw new FormatError(`slot ${slot} is outside the u64 range`);
  return sha256(assetPrefix(TAG_PADDING, asset), paddingKey, bigEndian(slot, 8));
}

/** An internal node's hash: binds both child hashes and both child sums. */
export async function nodeHash(left, leftSum, right, rightSum) {
  if (left.length !== 32 || right.length !== 32) throw new FormatError("child hashes must be 32 bytes");
  return sha256(Uint8Array.of(TAG_NODE), left, encodeSum(leftSum), right, encodeSum(rightSum));
}

/** An asset entry's leaf hash in its record's asset map. */
export const entryHash = (entry) => sha256(Uint8Array.of(TAG_ENTRY), entry);

/** An asset map node's hash over two 32-byte child hashes. */
export async function mapNodeHash(left, right) {
  if (left.length !== 32 || right.length !== 32) throw new FormatError("asset map hashes must be 32 bytes");
  return sha256(Uint8Array.of(TAG_MAP_NODE), left, right);
}

/** The asset map root of a record with no assets. */
export const emptyMap = () => sha256(Uint8Array.of(TAG_MAP_NODE));
