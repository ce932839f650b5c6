// The auditor's chain-of-custody rules for the root stream, pure
// (docs/PROTOCOL.md §7, §11.2; verifier/audit.py). `checkEpoch` takes the last
// verified state and the next frame and returns the new state, or throws. In order:
//
//   1. the checkpoint is signed by the custodian's key, for its log (§5);
//   2. the record's header is in that log at index `epoch` (RFC 9162 inclusion),
//      and the entries sent are in its asset map: all of them (a full record,
//      record.js), or those proving what it says of the chosen assets
//      (selection.js: `asset-map-mismatch`, `asset-map-incomplete`);
//   3. `epoch-size-mismatch`: it is the newest record: epoch = size - 1;
//   4. history only grows: `fork` (same size, other root; or a log not extending
//      the last verified one: `prefixRoot` of the inclusion path, or a checkpoint
//      frame's consistency proof), `replayed-checkpoint`, `epoch-gap`;
//   5. `time-went-back`: record times never decrease;
//   6. with witnesses, a quorum cosigned (§12.3): a failure is returned as
//      `witnessFailure`, not thrown, for a caller that follows the chain past it.
//
// A frame of another kind than the subscription asked for is malformed. A
// checkpoint frame has no record: rules 2, 3 and 5 do not apply, and 6 goes
// without the record's time. Solvency findings (an asset INSOLVENT or UNPROVEN, a
// chosen asset the record lacks: `absent`) are returned, not thrown. Reserve
// reports (§13.4) are not checked here; `boundReports` keeps those records bind.

import { FormatError, UsageError, VerificationError } from "./errors.js";
import { equal, toHex } from "./fields.js";
import { openCheckpoint } from "./checkpoint.js";
import { checkQuorum } from "./cosignature.js";
import { sha256 } from "./hashing.js";
import { decodeRecord, headerInLog, isStale } from "./record.js";
import { checkSelection } from "./selection.js";
import { prefixRoot, verifyConsistency } from "./rfc9162.js";

/** Failures that, before anything verified, mean a wrong key: not evidence. */
export const FIRST_CONTACT_CHECKS = new Set(["unknown-key", "origin-mismatch"]);

/** What a subscriber asked for: every asset (`assets` null), the chosen `assets`
 * (a list of ids), or `checkpoints` alone. */
export const ALL_ASSETS = Object.freeze({ assets: null, checkpoints: false });

/** The `/roots` query parameters that ask for `subscription` (after `since`). */
export function subscriptionQuery({ assets, checkpoints }) {
  if (checkpoints) return "&only=checkpoints";
  return assets === null ? "" : `&assets=${[...assets].sort().join(",")}`;
}

/** The names of an asset's stale reserve sources in `record` (§4.2). */
export function staleSources(record, asset) {
  return asset.sources.filter((s) => isStale(s, record.timestampMs, record.maxReserveAgeMs)).map((s) => s.name);
}

function findings(record) {
  const found = record.assets
    .filter((a) => a.status !== "SOLVENT")
    .map((a) => ({
      asset: a.asset,
      status: a.status.toLowerCase(),
      detail:
        a.status === "INSOLVENT"
          ? `reserves ${a.reserves} < liabilities ${a.liabilities}`
          : `stale reserve sources: ${staleSources(record, a).join(", ")}`,
    }));
  for (const asset of record.absent ?? []) found.push({ asset, status: "absent", detail: "the record has no entry for it" });
  return Object.freeze(found.map(Object.freeze));
}

function checkKind(type, subscription) {
  if (subscription.checkpoints) {
    if (type !== "checkpoint") throw new FormatError("a record in a stream of checkpoints only");
  } else if (type === "checkpoint") {
    throw new FormatError("a checkpoint without its record");
  } else if (type === "epoch-assets" && subscription.assets === null) {
    throw new FormatError("chosen assets' entries where the whole record was asked for");
  } else if (type === "epoch" && subscription.assets !== null) {
    // a whole record would not be checked to hold the chosen assets (absent)
    throw new FormatError("a whole record where chosen assets' entries were asked for");
  }
}

/** `fork` unless the checkpoint's log extends `state`'s (§11.2). */
async function checkExtends(state, checkpoint, message) {
  if (message.type === "checkpoint") {
    try {
      await verifyConsistency(state.size, checkpoint.size, state.root, checkpoint.root, message.consistency);
    } catch (error) {
      if (!(error instanceof VerificationError)) throw error;
      throw new VerificationError("fork", `not an extension of the last log: ${error.message}`);
    }
  } else if (!equal(await prefixRoot(message.inclusion), state.root)) {
    throw new VerificationError("fork", `its first ${state.size} records are not the log last verified`);
  }
}

/** The reports `record` binds (Map: hex hash -> note), in record order, among
 * `held` (the last record's) and the frame's new `reports` (§11.2; auditor.py). */
export async function boundReports(held, record, reports) {
  if (record === null) return held;
  const known = new Map(held);
  for (const note of reports) known.set(toHex(await sha256(note)), note);
  const bound = new Map();
  for (const source of record.assets.flatMap((a) => a.sources)) {
    const hash = toHex(source.reportHash);
    if (source.attested && known.has(hash) && !bound.has(hash)) bound.set(hash, known.get(hash));
  }
  return bound;
}

/** The record, or the chosen part of it, the frame proves in the checkpoint's log. */
async function recordInLog(message, checkpoint, subscription) {
  if (message.type === "checkpoint") return null;
  if (message.type === "epoch") {
    const record = await decodeRecord(message.record);
    await headerInLog(record.header.bytes, message.inclusion, checkpoint);
    return record;
  }
  const header = await headerInLog(message.header, message.inclusion, checkpoint);
  return checkSelection(header, message.entries, subscription.assets ?? []);
}

/**
 * Verify the frame `message` (stream.js's `parseMessage`) after `state` (null: the
 * first frame seen) under the verifier `key`. Options: `witnesses`, `quorum`, `now`
 * (as cosignature.js's `checkQuorum`), `subscription` (default ALL_ASSETS).
 *
 * Returns `{state: {origin, size, root, timestampMs, checkpoint (the note's text)},
 * epoch, record (null for a checkpoint frame; a full record, or selection.js's
 * partialRecord), cosignatures, witnessFailure (a VerificationError or null),
 * findings: [{asset, status, detail}]}`. Throws VerificationError naming the
 * failed rule 1-5, or FormatError for a malformed record or note, or a frame of
 * another kind than subscribed to.
 */
export async function checkEpoch(state, message, key, { witnesses = [], quorum = 0, now = null, subscription = ALL_ASSETS } = {}) {
  checkKind(message.type, subscription);
  if (!Number.isInteger(quorum) || quorum < 0 || quorum > witnesses.length) {
    throw new UsageError(`a quorum of ${quorum} out of ${witnesses.length} witnesses`);
  }
  const checkpoint = await openCheckpoint(message.checkpoint, key);
  const record = await recordInLog(message, checkpoint, subscription);
  if (record !== null && record.epoch !== checkpoint.size - 1n) {
    throw new VerificationError(
      "epoch-size-mismatch",
      `record of epoch ${record.epoch} comes with a log of ${checkpoint.size} records`,
    );
  }
  if (state !== null) {
    if (checkpoint.size === state.size && !equal(checkpoint.root, state.root)) {
      throw new VerificationError("fork", `two different signed roots for a log of ${state.size} records`);
    }
    if (checkpoint.size <= state.size) {
      throw new VerificationError("replayed-checkpoint", `log of ${checkpoint.size} records after one of ${state.size}`);
    }
    if (checkpoint.size !== state.size + 1n) {
      throw new VerificationError("epoch-gap", `epochs ${state.size} to ${checkpoint.size - 2n} were skipped`);
    }
    await checkExtends(state, checkpoint, message);
    if (record !== null && record.timestampMs < state.timestampMs) {
      throw new VerificationError("time-went-back", "record is older than the previous one");
    }
  }
  let cosignatures = [];
  let witnessFailure = null;
  try {
    const recordMs = record?.timestampMs ?? null;
    cosignatures = await checkQuorum(checkpoint.note, witnesses, quorum, { recordMs, now });
  } catch (error) {
    if (!(error instanceof VerificationError)) throw error;
    witnessFailure = error;
  }
  return Object.freeze({
    state: Object.freeze({
      origin: checkpoint.origin,
      size: checkpoint.size,
      root: checkpoint.root,
      timestampMs: record?.timestampMs ?? state?.timestampMs ?? 0n,
      checkpoint: new TextDecoder().decode(message.checkpoint),
    }),
    epoch: checkpoint.size - 1n,
    record,
    cosignatures,
    witnessFailure,
    findings: record === null ? Object.freeze([]) : findings(record),
  });
}
