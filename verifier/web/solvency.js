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
//            asset of the record is not SOLVENT, as the CLI)
//   invalid  {valid: false, exit: 1, check, reason}   check: a check name of
//            PROTOCOL §3, §5, §7, §12.3, or "format" for malformed input
//            (reason then begins "malformed: ")
//   usage    {valid: null, exit: 2, error: "usage", reason}   the caller's options
//
// Integers of the protocol (epochs, sizes, times in ms, amounts) are BigInt, so a
// result is not JSON.stringify-able as it is; the amounts are also given as the
// CLI prints them (`formatAmount`). The modules below are exported for an auditor's
// page: a frame of the root stream (stream.js), checkpoints (checkpoint.js),
// RFC 9162 proofs (rfc9162.js), records (record.js), cosignatures (cosignature.js).

import { FormatError, UsageError, VerificationError } from "./errors.js";
import { fromHex, toHex } from "./fields.js";
import { openCheckpoint, parseVerifierKey } from "./checkpoint.js";
import { checkQuorum, parseWitnessKey } from "./cosignature.js";
import { parseProofFile, verifyProof } from "./proof.js";
import { verifyConsistency } from "./rfc9162.js";

export * from "./errors.js";
export { printableId } from "./hashing.js";
export { decodeRecord, expectedStatus, isStale } from "./record.js";
export { EMPTY_ROOT, verifyConsistency, verifyInclusion } from "./rfc9162.js";
export { openCheckpoint, openNote, parseCheckpoint, parseVerifierKey, splitNote } from "./checkpoint.js";
export { checkQuorum, parseWitnessKey, verifyCosignatures } from "./cosignature.js";
export { parseProofFile, recordInLog, verifyProof } from "./proof.js";
export { parseEpochMessage } from "./stream.js";

const LINES = /\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/; // Python's str.splitlines()

/** `value` smallest units as an exact decimal number of `decimals` places, trailing
 * zeros dropped (verifier/cli.py's format_amount). */
export function formatAmount(value, decimals) {
  if (decimals === 0) return String(value);
  const unit = 10n ** BigInt(decimals);
  const fraction = String(value % unit).padStart(decimals, "0");
  return `${value / unit}.${fraction}`.replace(/0+$/, "").replace(/\.$/, "");
}

/** A Unix time in milliseconds (BigInt) as `YYYY-MM-DDTHH:MM:SSZ`, UTC, for any u64. */
export function formatTime(ms) {
  const seconds = BigInt(ms) / 1000n;
  const z = seconds / 86400n + 719468n; // days since 0000-03-01 (H. Hinnant's civil_from_days)
  const era = z / 146097n;
  const doe = z - era * 146097n;
  const yoe = (doe - doe / 1460n + doe / 36524n - doe / 146096n) / 365n;
  const doy = doe - (365n * yoe + yoe / 4n - yoe / 100n);
  const mp = (5n * doy + 2n) / 153n;
  const day = doy - (153n * mp + 2n) / 5n + 1n;
  const month = mp < 10n ? mp + 3n : mp - 9n;
  const year = yoe + era * 400n + (month <= 2n ? 1n : 0n);
  const rest = seconds % 86400n;
  const two = (n) => String(n).padStart(2, "0");
  return (
    `${String(year).padStart(4, "0")}-${two(month)}-${two(day)}` +
    `T${two(rest / 3600n)}:${two((rest / 60n) % 60n)}:${two(rest % 60n)}Z`
  );
}

/** The log's verifier key text (`<name>+<key id>+<base64>`, surrounding white space
 * ignored), parsed; UsageError if it does not parse. */
export async function loadVerifierKey(text) {
  try {
    return await parseVerifierKey(text);
  } catch (error) {
    if (error instanceof FormatError) throw new UsageError(`verifierKey: ${error.message}`);
    throw error;
  }
}

/**
 * The witnesses and quorum of the options (verifier/inputs.py's load_witnesses):
 * `witnessKeys` is a list of texts, each a witness key or several, one per line
 * (a file's content); no two of one name. `quorum` is 0 .. their number, by
 * default all of them. UsageError otherwise.
 */
export async function loadWitnessKeys(witnessKeys = [], quorum = undefined) {
  if (typeof witnessKeys === "string" || !Array.isArray(witnessKeys)) {
    throw new UsageError("witnessKeys must be a list of key texts");
  }
  const keys = [];
  for (const value of witnessKeys) {
    const lines = String(value).split(LINES).filter((line) => line.trim());
    if (lines.length === 0) throw new UsageError(`witnessKeys: no key in ${JSON.stringify(value)}`);
    for (const line of lines) {
      let key;
      try {
        key = await parseWitnessKey(line);
      } catch (error) {
        if (error instanceof FormatError) throw new UsageError(`witnessKeys: ${error.message}`);
        throw error;
      }
      if (keys.some((k) => k.name === key.name)) {
        throw new UsageError(`witnessKeys: two keys of ${key.name}: a quorum counts witnesses`);
      }
      keys.push(key);
    }
  }
  const required = quorum ?? keys.length;
  if (!Number.isInteger(required) || required < 0 || required > keys.length) {
    throw new UsageError(`quorum ${String(quorum)}: give 0 to ${keys.length} (the witness keys)`);
  }
  return { witnesses: keys, quorum: required };
}

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
 * `cosigned_by` ([{name, time, timestamp}]), `solvent` (every asset of the record),
 * `assets` ([{asset, decimals, balance, liabilities, reserves, status, units:
 * {balance, liabilities, reserves}}]: the amounts formatted, and in BigInt units),
 * and beyond the CLI's JSON `origin`, `root` (hex), `timestamp_ms` and `record`
 * (record.js's decoded record: every asset's status, reserve sources).
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
