// Frames of the root stream `/roots` (docs/PROTOCOL.md §11.2; verifier/stream.py):
//
//   {"type": "epoch", "record": "<base64 epoch record>",
//    "checkpoint": "<signed note of the log after this epoch>",
//    "inclusion": ["<64 hex>", ...], "consistency": ["<64 hex>", ...],
//    "reports": ["<signed reserve report>", ...]}
//
// read as strictly as a proof file (fields.js), at most 1 MiB; `reports` lists no
// report twice. The checks of a frame against the last verified one are the
// auditor's (checkpoint.js, rfc9162.js, proof.js's recordInLog, record.js).

import { FormatError } from "./errors.js";
import { b64, exactKeys, hex32List, loadObject, show, text, utf8 } from "./fields.js";

export const MAX_MESSAGE_BYTES = 1 << 20;
const KEYS = ["type", "record", "checkpoint", "inclusion", "consistency", "reports"];

/** One frame (a string, or its bytes) as `{record, checkpoint, inclusion,
 * consistency, reports}`: bytes, and lists of bytes. Throws FormatError. */
export function parseEpochMessage(data) {
  const doc = loadObject(data, MAX_MESSAGE_BYTES, "stream message");
  if (doc.type !== "epoch") {
    throw new FormatError(`unknown stream message type ${doc.type === undefined ? "None" : show(doc.type)}`);
  }
  exactKeys(doc, KEYS, "epoch message");
  if (!Array.isArray(doc.reports)) throw new FormatError("reports must be a list of signed reports");
  const reports = doc.reports.map((r, i) => text(r, `reports[${i}]`));
  if (new Set(reports).size !== reports.length) throw new FormatError("reports lists a signed report twice");
  return Object.freeze({
    record: b64(doc.record, "record"),
    checkpoint: utf8(text(doc.checkpoint, "checkpoint")),
    inclusion: hex32List(doc.inclusion, "inclusion"),
    consistency: hex32List(doc.consistency, "consistency"),
    reports: Object.freeze(reports.map((r) => utf8(r))),
  });
}
