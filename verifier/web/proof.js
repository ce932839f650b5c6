// A user's proof file and the whole chain of checks on it (docs/PROTOCOL.md §6-7;
// verifier/proof.py).
//
//   {"format": "solvency-proof/2", "user": "<user id>", "salt": "<64 hex>",
//    "header": "<base64 record header>",
//    "assets": [{"entry": "<base64 asset entry>", "index": 0, "map_path": ["<64 hex>", ...],
//                "slot": 5, "balance": "<decimal>",
//                "path": [["<64 hex sibling hash>", "<decimal sibling sum>"], ...]}],
//    "inclusion": ["<64 hex>", ...], "checkpoint": "<signed note text>"}
//
// Nothing in it is trusted: the header's log index is its epoch, the log size the
// checkpoint's, and each entry is proven against the header's asset map root.
// Parsing checks syntax only (fields.js): a slot, balance or sibling sum out of
// range parses, and fails its §3 check by name; an index out of range fails
// `asset-map-mismatch`.

import { FormatError, VerificationError } from "./errors.js";
import { b64, decimal, exactKeys, hex32, hex32List, loadObject, natural, show, text, utf8 } from "./fields.js";
import { checkUserId, commitment, leafHash, MAX_BALANCE } from "./hashing.js";
import { verifyPath } from "./sumtree.js";
import { verifyMapPath } from "./assetmap.js";
import { decodeEntry, headerInLog } from "./record.js";
import { partialRecord } from "./selection.js";
import { openCheckpoint } from "./checkpoint.js";
import { checkQuorum } from "./cosignature.js";

export const FORMAT = "solvency-proof/2";
export const MAX_PROOF_BYTES = 1 << 22; // 4 MiB
const KEYS = ["format", "user", "salt", "header", "assets", "inclusion", "checkpoint"];
const ASSET_KEYS = ["entry", "index", "map_path", "slot", "balance", "path"];

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
    entry: b64(doc.entry, `${where}.entry`),
    index: natural(doc.index, `${where}.index`),
    mapPath: hex32List(doc.map_path, `${where}.map_path`),
    slot: natural(doc.slot, `${where}.slot`),
    balance: decimal(doc.balance, `${where}.balance`),
    path: Object.freeze(path),
  });
}

/**
 * Parse a proof file (a string, or its bytes: bytes let a byte order mark and
 * invalid UTF-8 be seen) strictly into `{user, salt, header, assets: [{entry, index,
 * mapPath, slot, balance, path: [{hash, sum}]}], inclusion, checkpoint}` (bytes,
 * BigInt). Throws FormatError naming the offending field.
 */
export function parseProofFile(data) {
  const doc = loadObject(data, MAX_PROOF_BYTES, "proof file");
  // The format first: a file of another format has other keys, and says so.
  if (doc.format === "solvency-proof/1") {
    throw new FormatError(
      "proof format solvency-proof/1 (unreleased, with the whole record) is no longer read: " +
        `ask the prover for a new proof (${FORMAT})`,
    );
  }
  if (doc.format !== FORMAT) {
    throw new FormatError(`unsupported proof format ${show(doc.format)}, want "${FORMAT}"`);
  }
  exactKeys(doc, KEYS, "proof file");
  const user = text(doc.user, "user");
  checkUserId(user);
  if (!Array.isArray(doc.assets) || doc.assets.length === 0) {
    throw new FormatError("assets must be a non-empty list (a proof proves a balance)");
  }
  const salt = hex32(doc.salt, "salt");
  const header = b64(doc.header, "header");
  const assets = doc.assets.map((a, i) => assetPath(a, `assets[${i}]`));
  return Object.freeze({
    user,
    salt,
    header,
    assets: Object.freeze(assets),
    inclusion: hex32List(doc.inclusion, "inclusion"),
    checkpoint: utf8(text(doc.checkpoint, "checkpoint")),
  });
}

/**
 * Run every check of §7 on a parsed proof under the verifier `key`
 * (`parseVerifierKey`), in order; the first failure is thrown (VerificationError
 * naming its check, or FormatError for a malformed record or note). Options:
 * `user` (the proof must be for this user), `origin` (the log's expected origin),
 * `witnesses` (parsed witness keys), `quorum` (0 .. witnesses.length) and `now`
 * (the verifier's clock, POSIX seconds; null: the system clock).
 * Returns `{user, epoch, timestampMs, checkpoint, record (selection.js's
 * partialRecord of the proven entries), cosignatures, assets: [{asset, decimals,
 * balance, liabilities, reserves, status}]}` (status lower case).
 */
export async function verifyProof(proof, key, { user = null, origin = null, witnesses = [], quorum = 0, now = null } = {}) {
  // 1. The checkpoint is signed by the custodian's key (and names the expected log).
  const checkpoint = await openCheckpoint(proof.checkpoint, key, origin);

  // 2. The record's header is the leaf at index = its epoch number in that log.
  const header = await headerInLog(proof.header, proof.inclusion, checkpoint);

  // 3. A quorum of the configured witnesses cosigned the checkpoint (§12.3).
  const cosignatures = await checkQuorum(checkpoint.note, witnesses, quorum, {
    recordMs: header.timestampMs,
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

  // 5. Each asset's entry is in the record's asset map, and the user's path leads
  // from their leaf to that asset's signed root.
  const assets = [];
  const states = [];
  for (const item of proof.assets) {
    await verifyMapPath(item.entry, item.index, item.mapPath, header.assetCount, header.assetMapRoot);
    const state = decodeEntry(item.entry, header);
    if (states.some((s) => s.asset === state.asset)) {
      throw new VerificationError("duplicate-asset", `two paths for asset ${state.asset}`);
    }
    states.push(state);
    // A balance above MAX_BALANCE fails leaf-range (or an earlier check) before
    // its leaf is used: it gets a placeholder, never an encoding error.
    const leaf =
      item.balance <= MAX_BALANCE ? await leafHash(state.asset, userCommitment, item.balance) : new Uint8Array(32);
    try {
      await verifyPath({
        height: state.height,
        root: state.root,
        liabilities: state.liabilities,
        slot: item.slot,
        leaf,
        amount: item.balance,
        path: item.path,
      });
    } catch (error) {
      if (!(error instanceof VerificationError)) throw error;
      throw new VerificationError(error.check, `asset ${state.asset}: ${error.detail}`);
    }
    assets.push(
      Object.freeze({
        asset: state.asset,
        decimals: state.decimals,
        balance: item.balance,
        liabilities: state.liabilities,
        reserves: state.reserves,
        status: state.status.toLowerCase(),
      }),
    );
  }
  const record = partialRecord(header, states);
  return Object.freeze({
    user: proof.user,
    epoch: header.epoch,
    timestampMs: header.timestampMs,
    checkpoint,
    record,
    cosignatures,
    assets: Object.freeze(assets),
  });
}
