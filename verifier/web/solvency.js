// The verifier in the browser: docs/PROTOCOL.md's proof and checkpoint checks in
// standard JavaScript, with WebCrypto (SHA-256, Ed25519) and BigInt for every amount,
// sum, size and time; no dependency. It reports the same check names as the
// Python verifier (verifier/), and tests/js/ holds it to tests/vectors/ as
// tests/verifier/ holds that one. WebCrypto exists only in a secure context: a page
// using this module is served over https or from localhost.
//
// The three entry points below never throw for a bad input or option: they return
// a result object shaped as `solvency-verify ... --json` prints, with the CLI's
// key names:
//
//   valid    {valid: true, exit: 0, ...what was verified}  (proof: exit 4 when some
//            asset of the proof is not SOLVENT, as the CLI)
//   invalid  {valid: false, exit: 1, check, reason}   check: a check name of
//            PROTOCOL §3, §5, §7, §12.3, or "format" for malformed input
//            (reason then begins "malformed: ")
//   usage    {valid: null, exit: 2, error: "usage", reason}   the caller's options
//
// Integers of the protocol (epochs, sizes, times in ms, amounts) are BigInt, so a
// result is not JSON.stringify-able as it is; the amounts are also given as the
// CLI prints them (`formatAmount`). The modules below are exported for an auditor's
// page: frames of the root stream (stream.js) and the auditor's rules (audit.js),
// checkpoints (checkpoint.js), RFC 9162 proofs (rfc9162.js), records (record.js),
// asset maps and chosen assets (assetmap.js, selection.js), cosignatures
// (cosignature.js). A page that verifies no proof file imports those directly.

import { FormatError, UsageError, VerificationError } from "./errors.js";
import { fromHex, toHex } from "./fields.js";
import { openCheckpoint } from "./checkpoint.js";
import { checkQuorum } from "./cosignature.js";
import { formatTime, formatAmount } from "./display.js";
import { loadVerifierKey, loadWitnessKeys } from "./inputs.js";
import { parseProofFile, verifyProof } from "./proof.js";
import { verifyConsistency } from "./rfc9162.js";

export * from "./errors.js";
export * from "./display.js";
export * from "./inputs.js";
export { printableId } from "./hashing.js";
export { decodeEntry, decodeHeader, decodeRecord, expectedStatus, headerInLog, isStale } from "./record.js";
export { mapRoot, verifyMapPath } from "./assetmap.js";
export { checkSelection, partialRecord } from "./selection.js";
export { EMPTY_ROOT, prefixRoot, rootFromLeafHashes, verifyConsistency, verifyInclusion } from "./rfc9162.js";
export { openCheckpoint, openNote, parseCheckpoint, parseVerifierKey, splitNote } from "./checkpoint.js";
export { checkQuorum, parseWitnessKey, verifyCosignatures } from "./cosignature.js";
export { parseProofFile, verifyProof } from "./proof.js";
export { parseMessage } from "./stream.js";
export { ALL_ASSETS, boundReports, checkEpoch, subscriptionQuery } from "./audit.js";

async function readInput(input) {
  if (typeof input === "string" || input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  if (typeof input?.arrayBuffer === "function") return new Uint8Array(await input.arrayBuffer()); // a File
  throw new UsageError("the input must be a string, bytes or a File");
}

async function configure(options) {
  const key = await loadVerifierKey(options.verifierKey);
  const { witnesses, quorum } = await loadWitnessKeys(options.witnessKeys, options.quorum);
  for (const name of ["user", "origin"]) {
    if (options[name] !== undefined && options[name] !== null && typeof options[name] !== "string") {
      throw new UsageError(`${name} must be a string`);
    }
  }
  if (!["number", "bigint", "undefined"].includes(typeof options.now) && options.now !== null) {
    throw new UsageError("now must be POSIX seconds");
  }
  return { key, witnesses, quorum };
}

/** Run `check` and turn what it throws about the input into a result object. */
async function outcome(check) {
  try {
    return await check();
  } catch (error) {
    if (error instanceof VerificationError) {
      return { valid: false, exit: 1, check: error.check, reason: error.detail };
    }
    if (error instanceof FormatError) {
      return { valid: false, exit: 1, check: "format", reason: `malformed: ${error.message}` };
    }
    if (error instanceof UsageError) return { valid: null, exit: 2, error: "usage", reason: error.message };
    throw error; // a bug of ours, or no WebCrypto
  }
}

function cosigners(cosignatures) {
  return cosignatures.map((c) => ({
    name: c.witness.name,
    time: formatTime(c.timestamp * 1000n),
    timestamp: c.timestamp,
  }));
}

/**
 * Verify a proof file (PROTOCOL §7) as `solvency-verify proof FILE --json` does.
 *
 * `input`: the file as bytes (Uint8Array, ArrayBuffer, a File), or a string
 * (bytes are better: a byte order mark or invalid UTF-8 is then seen as such).
 * Options: `verifierKey` (the log's key text, required), `user` (the proof must be
 * this user's), `origin` (the log's expected origin), `witnessKeys` and `quorum`
 * (`loadWitnessKeys`), `now` (the clock for cosignature times, POSIX seconds;
 * default the system clock).
 *
 * A valid result also holds: `user`, `epoch`, `time` (the record's), `log_size`,
 * `cosigned_by` ([{name, time, timestamp}]), `solvent` (every asset of the proof:
 * the record's other assets are not in it),
 * `assets` ([{asset, decimals, balance, liabilities, reserves, status, units:
 * {balance, liabilities, reserves}}]: the amounts formatted, and in BigInt units),
 * and beyond the CLI's JSON `origin`, `root` (hex), `timestamp_ms`, `asset_count`
 * (the record's) and `record` (selection.js's partialRecord of the proof's
 * entries: their statuses, reserve sources).
 */
export async function verifyProofFile(input, options = {}) {
  return outcome(async () => {
    const { key, witnesses, quorum } = await configure(options);
    const proof = parseProofFile(await readInput(input));
    const report = await verifyProof(proof, key, {
      user: options.user,
      origin: options.origin,
      witnesses,
      quorum,
      now: options.now,
    });
    return {
      valid: true,
      exit: report.record.solvent ? 0 : 4,
      user: report.user,
      epoch: report.epoch,
      time: formatTime(report.timestampMs),
      log_size: report.checkpoint.size,
      cosigned_by: cosigners(report.cosignatures),
      solvent: report.record.solvent,
      assets: report.assets.map((a) => ({
        asset: a.asset,
        decimals: a.decimals,
        balance: formatAmount(a.balance, a.decimals),
        liabilities: formatAmount(a.liabilities, a.decimals),
        reserves: formatAmount(a.reserves, a.decimals),
        status: a.status,
        units: { balance: a.balance, liabilities: a.liabilities, reserves: a.reserves },
      })),
      origin: report.checkpoint.origin,
      root: toHex(report.checkpoint.root),
      timestamp_ms: report.timestampMs,
      asset_count: report.record.assetCount,
      record: report.record,
    };
  });
}

/**
 * Verify a signed checkpoint note (text or bytes) as `solvency-verify checkpoint
 * --json`: the log's signature under `verifierKey`, the origin, and with
 * `witnessKeys` the quorum of cosignatures dated up to `now` + 60 s, and from
 * `recordMs` / 1000 - 60 s when the caller names the time of the record the
 * checkpoint vouches for (BigInt ms; PROTOCOL §12.3). A valid result holds
 * `origin`, `size`, `root` (hex) and `cosigned_by`.
 */
export async function verifyCheckpoint(note, options = {}) {
  return outcome(async () => {
    const { key, witnesses, quorum } = await configure(options);
    const checkpoint = await openCheckpoint(await readInput(note), key, options.origin);
    const cosignatures = await checkQuorum(checkpoint.note, witnesses, quorum, {
      recordMs: options.recordMs ?? null,
      now: options.now,
    });
    return {
      valid: true,
      exit: 0,
      origin: checkpoint.origin,
      size: checkpoint.size,
      root: toHex(checkpoint.root),
      cosigned_by: cosigners(cosignatures),
    };
  });
}

function proofHashes(proof) {
  const items = typeof proof === "string" ? proof.split(/\s+/).filter(Boolean) : proof;
  if (!Array.isArray(items)) throw new UsageError("the consistency proof must be a list of hashes or a text");
  return items.map((h) => {
    if (h instanceof Uint8Array) return h;
    if (typeof h !== "string" || !/^(?:[0-9a-fA-F]{2})*$/.test(h)) {
      throw new FormatError("PROOF must hold one hex hash per line");
    }
    return fromHex(h);
  });
}

/**
 * Verify that the checkpoint `newNote` extends `oldNote` (both signed by
 * `verifierKey`, of one origin) by the RFC 9162 consistency `proof` (a list of
 * 32-byte hashes as bytes or hex, or a text of hex hashes), as `solvency-verify
 * consistency --json`. A valid result holds `old_size` and `new_size`.
 */
export async function checkConsistency(oldNote, newNote, proof, options = {}) {
  return outcome(async () => {
    const { key } = await configure({ ...options, witnessKeys: [], quorum: undefined });
    const old = await openCheckpoint(await readInput(oldNote), key, options.origin);
    const next = await openCheckpoint(await readInput(newNote), key, old.origin);
    await verifyConsistency(old.size, next.size, old.root, next.root, proofHashes(proof));
    return { valid: true, exit: 0, old_size: old.size, new_size: next.size };
  });
}
