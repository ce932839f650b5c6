// C2SP signed notes with Ed25519, the tlog-checkpoint they carry, and note keys
// (docs/PROTOCOL.md §5; verifier/checkpoint.py). Ed25519 is WebCrypto's.
//
//   <body: lines, each ending in LF>  LF  ("— <key name> <base64(key_id[4] || sig)>" LF)+
//
// A note is read strictly: at most 64 KiB of UTF-8 ending in LF, no character
// below U+0020 but LF, no DEL; 1 to 100 signature lines, each `— <name> <base64>`
// with a key name (non-empty, no white space, no `+`) and canonical base64 of at
// least 5 bytes. A checkpoint body is exactly origin, size (a decimal u64) and the
// base64 of a 32-byte root: no extension line. A key is
// `<name>+<key id, 8 hex>+<base64(alg || public key[32])>`, key id =
// SHA-256(name || LF || alg || public key)[0:4]; alg 0x01 signs notes (a log,
// an attester), 0x04 cosigns checkpoints (a witness, cosignature.js).

import { FormatError, VerificationError } from "./errors.js";
import { b64, fromUtf8, utf8 } from "./fields.js";
import { PYTHON_SPACE, sha256 } from "./hashing.js";

export const ALG_ED25519 = 0x01;
export const SIG_PREFIX = "\u2014 "; // EM DASH, space
const MAX_NOTE_BYTES = 1 << 16;
const MAX_SIGNATURES = 100;
const SIZE = /^(?:0|[1-9][0-9]{0,19})$/;
const KEY_ID = /^[0-9a-f]{8}$/;
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f]/;
const STRIP = new RegExp(`^${PYTHON_SPACE.source}+|${PYTHON_SPACE.source}+$`, "g");
const imported = new WeakMap(); // key -> Promise of its WebCrypto public key

/** A C2SP signed-note key name: non-empty, no white space, no `+`. */
export function checkKeyName(name) {
  if (!name || name.includes("+") || PYTHON_SPACE.test(name)) {
    throw new FormatError(`invalid key name ${JSON.stringify(name)}: non-empty, no spaces, no '+'`);
  }
}

/** SHA-256(name || LF || alg || publicKey)[0:4] as a u32 Number. */
export async function keyId(name, alg, publicKey) {
  const digest = await sha256(utf8(name), Uint8Array.of(0x0a, alg), publicKey);
  return new DataView(digest.buffer).getUint32(0);
}

/**
 * A key text of algorithm `alg` as `{name, keyId, publicKey, alg}`; its key id must
 * match its name and key. Throws FormatError naming `what`.
 */
export async function parseKeyText(text, alg, what) {
  if (typeof text !== "string") throw new FormatError(`${what} must be a string`);
  const stripped = text.replace(STRIP, "");
  const [name, id, ...rest] = stripped.split("+");
  if (rest.length === 0 || !KEY_ID.test(id)) {
    throw new FormatError(`${what} must be <name>+<8 hex digits>+<base64 key>`);
  }
  checkKeyName(name);
  const raw = b64(rest.join("+"), what); // the base64 may hold "+" too
  const hexAlg = alg.toString(16).padStart(2, "0");
  if (raw.length !== 33 || raw[0] !== alg) {
    throw new FormatError(`${what} is not an Ed25519 key of type 0x${hexAlg} (0x${hexAlg} || 32 bytes)`);
  }
  const publicKey = raw.slice(1);
  const computed = await keyId(name, alg, publicKey);
  if (computed !== parseInt(id, 16)) throw new FormatError(`${what} id does not match its name and key`);
  return Object.freeze({ name, keyId: computed, publicKey, alg, text: stripped });
}

/** A log's (or an attester's) verifier key: `<name>+<key id>+<base64(0x01 || key)>`. */
export function parseVerifierKey(text) {
  return parseKeyText(text, ALG_ED25519, "verifier key");
}

/** True if `signature` (64 bytes) is `key`'s Ed25519 signature of `message`. A public
 * key WebCrypto refuses verifies nothing. */
export async function ed25519Verify(key, signature, message) {
  const { subtle } = globalThis.crypto;
  if (!imported.has(key)) {
    imported.set(key, subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]));
  }
  try {
    return await subtle.verify({ name: "Ed25519" }, await imported.get(key), signature, message);
  } catch {
    return false;
  }
}

function checkBody(note) {
  const content = typeof note === "string" ? note : fromUtf8(note, "note");
  if (!content.endsWith("\n")) throw new FormatError("note body must end with a newline");
  if (CONTROL.test(content)) throw new FormatError("note contains a control character");
  return content;
}

function noteBytes(note) {
  return typeof note === "string" ? utf8(note, "note") : note;
}

/**
 * A signed note (a string, or its UTF-8 bytes) as `{body, bodyText, signatures:
 * [{name, raw}]}`: the body's bytes and text, and each signature line's key name
 * and decoded bytes (key id || signature), in order, checked for form only.
 */
export function splitNote(note) {
  const bytes = noteBytes(note);
  if (bytes.length > MAX_NOTE_BYTES) throw new FormatError(`note is larger than ${MAX_NOTE_BYTES} bytes`);
  const content = checkBody(typeof note === "string" ? note : bytes);
  const cut = content.lastIndexOf("\n\n");
  if (cut < 0) throw new FormatError("note has no blank line before its signatures");
  const bodyText = content.slice(0, cut + 1);
  const lines = content.slice(cut + 2).split("\n").slice(0, -1);
  if (lines.length === 0 || lines.length > MAX_SIGNATURES) {
    throw new FormatError(`note must carry 1 to ${MAX_SIGNATURES} signature lines`);
  }
  const signatures = lines.map((line) => {
    if (!line.startsWith(SIG_PREFIX)) {
      throw new FormatError("signature line must start with an em dash and a space");
    }
    const fields = line.slice(SIG_PREFIX.length).split(" ");
    if (fields.length !== 2) throw new FormatError("signature line must be '— <name> <base64>'");
    const [name, encoded] = fields;
    checkKeyName(name);
    const raw = b64(encoded, "signature");
    if (raw.length < 5) throw new FormatError("signature is too short");
    return { name, raw };
  });
  return { body: utf8(bodyText), bodyText, signatures };
}

/** The key id at the head of a signature line's bytes. */
export function signatureKeyId(raw) {
  return new DataView(raw.buffer, raw.byteOffset, 4).getUint32(0);
}

/**
 * Verify `note` under `keys` and return its split form (`splitNote`). Lines by
 * other keys are ignored (witnesses' cosignatures among them); at least one line
 * must be by a given key (`unknown-key`), and each such line must carry 68 bytes
 * and a valid signature (`signature-invalid`).
 */
export async function openNote(note, keys) {
  const split = splitNote(note);
  let verified = false;
  for (const { name, raw } of split.signatures) {
    const key = keys.find((k) => k.name === name && k.keyId === signatureKeyId(raw));
    if (key === undefined) continue;
    if (raw.length !== 68 || !(await ed25519Verify(key, raw.subarray(4), split.body))) {
      throw new VerificationError("signature-invalid", `bad signature by ${name}`);
    }
    verified = true;
  }
  if (!verified) throw new VerificationError("unknown-key", "the note is not signed by the given key");
  return split;
}

/** A checkpoint body (text) as `{origin, size: BigInt, root: 32 bytes}`, strictly:
 * exactly the lines origin, size and root. */
export function parseCheckpoint(bodyText) {
  const content = checkBody(bodyText);
  const lines = content.slice(0, -1).split("\n");
  if (lines.length < 3) throw new FormatError("checkpoint needs origin, size and root lines");
  if (lines.length > 3) {
    throw new FormatError(
      `checkpoint has ${lines.length - 3} extension line(s) after the root: protocol version 1 defines none`,
    );
  }
  const [origin, size, root] = lines;
  if (!origin) throw new FormatError("checkpoint origin is empty");
  if (!SIZE.test(size) || BigInt(size) >= 1n << 64n) {
    throw new FormatError(`checkpoint size ${JSON.stringify(size)} is not a decimal u64`);
  }
  const rawRoot = b64(root, "checkpoint root");
  if (rawRoot.length !== 32) throw new FormatError("checkpoint root must be 32 bytes");
  return Object.freeze({ origin, size: BigInt(size), root: rawRoot });
}

/**
 * Open a signed checkpoint under the verifier `key` and parse it (§5, §7 step 1):
 * `{origin, size, root, note}` where `note` is the split note. Its origin must be
 * the key's name, and `origin` if given. Throws VerificationError `unknown-key`,
 * `signature-invalid` or `origin-mismatch`, or FormatError, in the order of §5.
 */
export async function openCheckpoint(note, key, origin = null) {
  const split = await openNote(note, [key]);
  const checkpoint = parseCheckpoint(split.bodyText);
  if (checkpoint.origin !== key.name) {
    throw new VerificationError(
      "origin-mismatch",
      `checkpoint is for log ${JSON.stringify(checkpoint.origin)}, the key is ${JSON.stringify(key.name)}'s`,
    );
  }
  if (origin !== null && origin !== undefined && checkpoint.origin !== origin) {
    throw new VerificationError(
      "origin-mismatch",
      `checkpoint is for log ${JSON.stringify(checkpoint.origin)}, not ${JSON.stringify(origin)}`,
    );
  }
  return Object.freeze({ ...checkpoint, note: split });
}
