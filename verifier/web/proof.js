// A user's proof file and the whole chain of checks on it (docs/PROTOCOL.md §6-7;
// verifier/proof.py).
//
//   {"format": "solvency-proof/1", "user": "<user id>", "salt": "<64 hex>",
//    "assets": [{"asset": "BTC", "slot": 5, "balance": "<decimal>",
//                "path": [["<64 hex sibling hash>", "<decimal sibling sum>"], ...]}],
//    "record": "<base64 epoch record>", "inclusion": ["<64 hex>", ...],
//    "checkpoint": "<signed note text>"}
//
// Nothing in it is trusted: the record's log index is its epoch and the log size
// the checkpoint's. Parsing checks syntax only (fields.js): a slot, balance or
// sibling sum out of range parses, and fails its §3 check by name.

import { FormatError, VerificationError } from "./errors.js";
import { b64, decimal, exactKeys, hex32, hex32List, loadObject, natural, show, text, utf8 } from "./fields.js";
import { checkUserId, commitment, leafHash, MAX_BALANCE, verifyPath } from "./hashing.js";
import { decodeRecord } from "./record.js";
import { leafHash as logLeafHash, verifyInclusion } from "./rfc9162.js";
import { openCheckpoint } from "./checkpoint.js";
import { checkQuorum } from "./cosignature.js";

export const FORMAT = "solvency-proof/1";
export const MAX_PROOF_BYTES = 1 << 22; // 4 MiB
const KEYS = ["format", "user", "salt", "assets", "record", "inclusion", "checkpoint"];
const ASSET_KEYS = ["asset", "slot", "balance", "path"];

function assetPath(doc, where) {
  doc = exactKeys(doc, ASSET_KEYS, where);
  const steps = doc.path;
  if (!Array.isArray(steps)) throw new FormatError(`${where}.path must be a list`);
  const path = steps.map((step, j) => {
    if (!Array.isArray(step) || step.length !== 2) throw new FormatError(`${where}.path[${j}] must be [hash, sum]`);
    return Object.freeze({
      hash: hex32(step[0], `${where}.path[${j}][0]`),
      sum: decimal(step[1], `${where}.path[${j}][1]`),
    });
  });
  return Object.freeze({
    asset: text(doc.asset, `${where}.asset`),
    slot: natural(doc.slot, `${where}.slot`),
    balance: decimal(doc.balance, `${where}.balance`),
    path: Object.freeze(path),
  });
}

/**
 * Parse a proof file (a string, or its bytes: bytes let a byte order mark and
 * invalid UTF-8 be seen) strictly into `{user, salt, assets: [{asset, slot,
 * balance, path: [{hash, sum}]}], record, inclusion, checkpoint}` (bytes, BigInt).
 * Throws FormatError naming the offending field.
 */
export function parseProofFile(data) {
  const doc = exactKeys(loadObject(data, MAX_PROOF_BYTES, "proof file"), KEYS, "proof file");
  if (doc.format !== FORMAT) {
    throw new FormatError(`unsupported proof format ${show(doc.format)}, want "${FORMAT}"`);
  }
  const user = text(doc.user, "user");
  checkUserId(user);
  if (!Array.isArray(doc.assets) || doc.assets.length === 0) {
    throw new FormatError("assets must be a non-empty list (a proof proves a balance)");
  }
  const salt = hex32(doc.salt, "salt");
  const assets = doc.assets.map((a, i) => assetPath(a, `assets[${i}]`));
  return Object.freeze({
    user,
    salt,
    assets: Object.freeze(assets),
    record: b64(doc.record, "record"),
    inclusion: hex32List(doc.inclusion, "inclusion"),
    checkpoint: utf8(text(doc.checkpoint, "checkpoint")),
  });
}

/** Decode `record` (bytes) and check it is leaf `epoch` of the checkpoint's log:
 * VerificationError `record-not-in-log` or an RFC 9162 inclusion check. */
export async function recordInLog(record, inclusion, checkpoint) {
  const decoded = decodeRecord(record);
  if (decoded.epoch >= checkpoint.size) {
    throw new VerificationError(
      "record-not-in-log",
      `epoch ${decoded.epoch} is not in a log of ${checkpoint.size} records`,
    );
  }
  await verifyInclusion(await logLeafHash(record), decoded.epoch, checkpoint.size, inclusion, checkpoint.root);
  return decoded;
}

/**
 * Run every check of §7 on a parsed proof under the verifier `key`
 * (`parseVerifierKey`), in order; the first failure is thrown (VerificationError
 * naming its check, or FormatError for a malformed record or note). Options:
 * `user` (the proof must be for this user), `origin` (the log's expected origin),
 * `witnesses` (parsed witness keys), `quorum` (0 .. witnesses.length) and `now`
 * (the verifier's clock, POSIX seconds; null: the system clock).
 * Returns `{user, epoch, timestampMs, checkpoint, record, cosignatures, assets:
 * [{asset, decimals, balance, liabilities, reserves, status}]}` (status lower case).
 */
export async function verifyProof(proof, key, { user = null, origin = null, witnesses = [], quorum = 0, now = null } = {}) {
  // 1. The checkpoint is signed by the custodian's key (and names the expected log).
  const checkpoint = await openCheckpoint(proof.checkpoint, key, origin);

  // 2. The epoch record is the leaf at index = its epoch number in that log.
  const record = await recordInLog(proof.record, proof.inclusion, checkpoint);

  // 3. A quorum of the configured witnesses cosigned the checkpoint (§12.3).
  const cosignatures = await checkQuorum(checkpoint.note, witnesses, quorum, {
    recordMs: record.timestampMs,
    now,
  });

  // 4. The proof is for the expected user.
  if (user !== null && user !== undefined && user !== proof.user) {
    throw new VerificationError(
      "user-mismatch",
      `proof is for ${JSON.stringify(proof.user)}, not ${JSON.stringify(user)}`,
    );
  }
  const userCommitment = await commitment(proof.user, proof.salt);

  // 5. Each asset path leads from this user's leaf to that asset's signed root.
  const assets = [];
  const seen = new Set();
  for (const entry of proof.assets) {
    if (seen.has(entry.asset)) {
      throw new VerificationError("duplicate-asset", `two paths for asset ${entry.asset}`);
    }
    seen.add(entry.asset);
    const state = record.assets.find((a) => a.asset === entry.asset);
    if (state === undefined) {
      throw new VerificationError("asset-not-in-record", `the epoch record has no asset ${entry.asset}`);
    }
    // A balance above MAX_BALANCE fails leaf-range (or an earlier check) before
    // its leaf is used: it gets a placeholder, never an encoding error.
    const leaf =
      entry.balance <= MAX_BALANCE
        ? await leafHash(entry.asset, userCommitment, entry.balance)
        : new Uint8Array(32);
    try {
      await verifyPath({
        height: state.height,
        root: state.root,
        liabilities: state.liabilities,
        slot: entry.slot,
        leaf,
        amount: entry.balance,
        path: entry.path,
      });
    } catch (error) {
      if (!(error instanceof VerificationError)) throw error;
      throw new VerificationError(error.check, `asset ${entry.asset}: ${error.detail}`);
    }
    assets.push(
      Object.freeze({
        asset: entry.asset,
        decimals: state.decimals,
        balance: entry.balance,
        liabilities: state.liabilities,
        reserves: state.reserves,
        status: state.status.toLowerCase(),
      }),
    );
  }
  return Object.freeze({
    user: proof.user,
    epoch: record.epoch,
    timestampMs: record.timestampMs,
    checkpoint,
    record,
    cosignatures,
    assets: Object.freeze(assets),
  });
}
