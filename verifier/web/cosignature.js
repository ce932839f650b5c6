// Witness cosignatures (C2SP tlog-cosignature, cosignature/v1) and a verifier's
// witness policy (docs/PROTOCOL.md §12.1, §12.3; verifier/cosignature.py, quorum.py).
//
// A witness key is `<name>+<key id>+<base64(0x04 || public key[32])>`. A
// cosignature is one more signature line of the checkpoint's note, whose bytes are
// key_id[4] || u64 timestamp || Ed25519 signature[64] of
// "cosignature/v1\ntime <timestamp>\n" || the checkpoint body.
//
// `checkQuorum` applies the policy, in this order: every line by a configured
// witness (same name and key id) is 76 bytes and verifies (`witness-signature-
// invalid`), and is dated within `floor(recordMs / 1000) - 60 .. floor(now) + 60`
// (`witness-time`; no lower bound without a record), line by line in note order;
// then at least `quorum` distinct configured witnesses cosigned (`witness-quorum`).
// Lines by other keys are ignored; with no witness configured nothing is checked.

import { FormatError, UsageError, VerificationError } from "./errors.js";
import { concat, readBigEndian, utf8 } from "./fields.js";
import { ed25519Verify, parseKeyText, signatureKeyId, splitNote } from "./checkpoint.js";

export const ALG_COSIGNATURE_V1 = 0x04;
export const MAX_TIMESTAMP = (1n << 63n) - 1n;
export const MAX_SKEW = 60n; // seconds a witness's clock may differ from the verifier's or the log's
const SIGNATURE_SIZE = 4 + 8 + 64;

/** A witness's cosigning key as `{name, keyId, publicKey, alg}`. */
export function parseWitnessKey(text) {
  return parseKeyText(text, ALG_COSIGNATURE_V1, "witness key");
}

/** What a cosignature/v1 signs: two header lines, then the checkpoint body (bytes). */
export function cosignedMessage(body, timestamp) {
  if (timestamp < 0n || timestamp > MAX_TIMESTAMP) {
    throw new FormatError(`cosignature timestamp ${timestamp} is not in 0..2**63-1`);
  }
  return concat(utf8(`cosignature/v1\ntime ${timestamp}\n`), body);
}

/**
 * The valid cosignatures of `note` (a signed note, as text, bytes or `splitNote`'s
 * result) by the configured `witnesses`, one per witness in note order, as
 * `[{witness, timestamp: BigInt}]`; `notBefore` and `notAfter` (BigInt POSIX
 * seconds, or null) bound a plausible timestamp. Throws VerificationError
 * `witness-signature-invalid`, `witness-time` or `witness-quorum` (fewer than
 * `quorum` distinct witnesses), or FormatError for a malformed note.
 */
export async function verifyCosignatures(note, witnesses, quorum, { notBefore = null, notAfter = null } = {}) {
  const split = note.signatures === undefined ? splitNote(note) : note;
  const valid = new Map();
  for (const { name, raw } of split.signatures) {
    const witness = witnesses.find((w) => w.name === name && w.keyId === signatureKeyId(raw));
    if (witness === undefined) continue; // the log's signature, or a witness not trusted here
    if (raw.length !== SIGNATURE_SIZE) {
      throw new VerificationError("witness-signature-invalid", `cosignature by ${name} is not 76 bytes`);
    }
    const timestamp = readBigEndian(raw.subarray(4, 12));
    const ok =
      timestamp <= MAX_TIMESTAMP &&
      (await ed25519Verify(witness, raw.subarray(12), cosignedMessage(split.body, timestamp)));
    if (!ok) throw new VerificationError("witness-signature-invalid", `bad cosignature by witness ${name}`);
    if ((notBefore !== null && timestamp < notBefore) || (notAfter !== null && timestamp > notAfter)) {
      throw new VerificationError(
        "witness-time",
        `witness ${name} dated its cosignature ${timestamp}, outside ${notBefore ?? "None"}..${notAfter ?? "None"}`,
      );
    }
    if (!valid.has(witness)) valid.set(witness, Object.freeze({ witness, timestamp }));
  }
  const cosignatures = [...valid.values()];
  requireQuorum(cosignatures, quorum);
  return cosignatures;
}

/** Throw `witness-quorum` unless `cosignatures` (one per witness) number `quorum`. */
export function requireQuorum(cosignatures, quorum) {
  if (cosignatures.length < quorum) {
    const names = cosignatures.map((c) => c.witness.name).join(", ") || "none";
    throw new VerificationError(
      "witness-quorum",
      `${cosignatures.length} configured witness(es) cosigned this checkpoint (${names}); ${quorum} are required`,
    );
  }
}

/** POSIX seconds as a BigInt, rounded down: a Number, a BigInt, or null for the clock now. */
export function posixSeconds(now) {
  if (now === null || now === undefined) return BigInt(Math.floor(Date.now() / 1000));
  if (typeof now === "bigint") return now;
  if (typeof now === "number" && Number.isFinite(now)) return BigInt(Math.floor(now));
  throw new UsageError(`now must be POSIX seconds, got ${String(now)}`);
}

/**
 * The whole policy on the signed checkpoint `note` (module comment); returns its
 * valid cosignatures. `recordMs` is the time (BigInt ms) of the record the
 * checkpoint vouches for, or null; `now` the verifier's clock (POSIX seconds; null:
 * the system clock). UsageError if `quorum` is not in 0 .. witnesses.length.
 */
export async function checkQuorum(note, witnesses, quorum, { recordMs = null, now = null } = {}) {
  if (!Number.isInteger(quorum) || quorum < 0 || quorum > witnesses.length) {
    throw new UsageError(`a quorum of ${quorum} out of ${witnesses.length} witnesses`);
  }
  if (witnesses.length === 0) return [];
  const notBefore = recordMs === null ? null : recordMs / 1000n - MAX_SKEW;
  const notAfter = posixSeconds(now) + MAX_SKEW;
  const cosignatures = await verifyCosignatures(note, witnesses, 0, { notBefore, notAfter });
  requireQuorum(cosignatures, quorum);
  return cosignatures;
}
