// The auditor's chain-of-custody rules for the root stream, pure
// (docs/PROTOCOL.md §7, §11.2; verifier/audit.py). `checkEpoch` takes the last
// verified state and the next frame and returns the new state, or throws. In order:
//
//   1. the checkpoint is signed by the custodian's key, for its log (§5);
//   2. the record is in that log at index `epoch` (RFC 9162 inclusion), and is a
//      valid record (record.js: layout, sums, the status §4.3 derives);
//   3. `epoch-size-mismatch`: it is the newest record: epoch = size - 1;
//   4. history only grows: `fork` (same size, other root, or no RFC 9162
//      consistency with the last verified checkpoint), `replayed-checkpoint`,
//      `epoch-gap`;
//   5. `time-went-back`: record times never decrease;
//   6. with witnesses, a quorum cosigned (§12.3): a failure is returned as
//      `witnessFailure`, not thrown, for a caller that follows the chain past it.
//
// Solvency findings (an asset INSOLVENT or UNPROVEN) are returned, not thrown.
// Reserve reports (§13.4) are not checked here: `solvency-verify watch --attester`.

import { VerificationError } from "./errors.js";
import { equal } from "./fields.js";
import { openCheckpoint } from "./checkpoint.js";
import { checkQuorum } from "./cosignature.js";
import { recordInLog } from "./proof.js";
import { isStale } from "./record.js";
import { verifyConsistency } from "./rfc9162.js";

/** Failures that, before anything verified, mean a wrong key: not evidence. */
export const FIRST_CONTACT_CHECKS = new Set(["unknown-key", "origin-mismatch"]);

/** The names of an asset's stale reserve sources in `record` (§4.2). */
export function staleSources(record, asset) {
  return asset.sources.filter((s) => isStale(s, record.timestampMs, record.maxReserveAgeMs)).map((s) => s.name);
}

function finding(record, a) {
  const detail =
    a.status === "INSOLVENT"
      ? `reserves ${a.reserves} < liabilities ${a.liabilities}`
      : `stale reserve sources: ${staleSources(record, a).join(", ")}`;
  return Object.freeze({ asset: a.asset, status: a.status.toLowerCase(), detail });
}

/**
 * Verify the frame `message` (stream.js's `parseEpochMessage`) after `state`
 * (null: the first frame seen) under the verifier `key`. Options: `witnesses`,
 * `quorum`, `now` (as cosignature.js's `checkQuorum`).
 *
 * Returns `{state: {origin, size, root, timestampMs, checkpoint (the note's
 * text)}, record, cosignatures, witnessFailure (a VerificationError or null),
 * findings: [{asset, status, detail}]}`. Throws VerificationError naming the
 * failed rule 1-5, or FormatError for a malformed record or note.
 */
export async function checkEpoch(state, message, key, { witnesses = [], quorum = 0, now = null } = {}) {
  const checkpoint = await openCheckpoint(message.checkpoint, key);
  const record = await recordInLog(message.record, message.inclusion, checkpoint);
  if (record.epoch !== checkpoint.size - 1n) {
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
    try {
      await verifyConsistency(state.size, checkpoint.size, state.root, checkpoint.root, message.consistency);
    } catch (error) {
      if (!(error instanceof VerificationError)) throw error;
      throw new VerificationError("fork", `not an extension of the last log: ${error.message}`);
    }
    if (record.timestampMs < state.timestampMs) {
      throw new VerificationError("time-went-back", "record is older than the previous one");
    }
  }
  let cosignatures = [];
  let witnessFailure = null;
  try {
    cosignatures = await checkQuorum(checkpoint.note, witnesses, quorum, { recordMs: record.timestampMs, now });
  } catch (error) {
    if (!(error instanceof VerificationError)) throw error;
    witnessFailure = error;
  }
  return Object.freeze({
    state: Object.freeze({
      origin: checkpoint.origin,
      size: checkpoint.size,
      root: checkpoint.root,
      timestampMs: record.timestampMs,
      checkpoint: new TextDecoder().decode(message.checkpoint),
    }),
    record,
    cosignatures,
    witnessFailure,
    findings: Object.freeze(record.assets.filter((a) => a.status !== "SOLVENT").map((a) => finding(record, a))),
  });
}
