// Frames of the root stream `/roots` (docs/PROTOCOL.md §11.2; verifier/stream.py),
// of three types by what the subscriber asked for:
//
//   {"type": "epoch", "record": "<base64 full epoch record>",      (all assets)
//    "checkpoint": "<signed note of the log after this epoch>",
//    "inclusion": ["<64 hex>", ...], "reports": ["<signed reserve report>", ...]}
//   {"type": "epoch-assets", "header": "<base64 record header>",   (?assets=A,B)
//    "entries": [{"entry": "<base64>", "index": 0, "map_path": ["<64 hex>", ...]}, ...],
//    "checkpoint", "inclusion", "reports" as above}
//   {"type": "checkpoint", "checkpoint": ..., "consistency": ...}  (?only=checkpoints)
//
// read as strictly as a proof file (fields.js), at most 1 MiB; `reports` lists no
// report twice (all on a connection's first frame, then the new ones), `entries`
// are sorted by index, each once. The checks of a frame against the last verified
// one are the auditor's (audit.js).

import { FormatError } from "./errors.js";
import { b64, exactKeys, hex32List, loadObject, natural, show, text, utf8 } from "./fields.js";

export const MAX_MESSAGE_BYTES = 1 << 20;
const COMMON = ["type", "checkpoint", "inclusion", "reports"];

function reports(value) {
  if (!Array.isArray(value)) throw new FormatError("reports must be a list of signed reports");
  const texts = value.map((r, i) => text(r, `reports[${i}]`));
  if (new Set(texts).size !== texts.length) throw new FormatError("reports lists a signed report twice");
  return Object.freeze(texts.map((r) => utf8(r)));
}

function entries(value) {
  if (!Array.isArray(value)) throw new FormatError("entries must be a list");
  const out = value.map((item, i) => {
    const where = `entries[${i}]`;
    item = exactKeys(item, ["entry", "index", "map_path"], where);
    return Object.freeze({
      entry: b64(item.entry, `${where}.entry`),
      index: natural(item.index, `${where}.index`),
      path: hex32List(item.map_path, `${where}.map_path`),
    });
  });
  if (out.some((e, i) => i > 0 && out[i - 1].index >= e.index)) {
    throw new FormatError("entries must be sorted by index, each index once");
  }
  return Object.freeze(out);
}

/** One frame (a string, or its bytes) as `{type, checkpoint}` and `consistency` (a
 * checkpoint frame), or `inclusion`, `reports` and `record` (an epoch frame) or
 * `header` and `entries: [{entry, index, path}]` (epoch-assets): bytes, lists of
 * bytes. Throws FormatError. */
export function parseMessage(data) {
  const doc = loadObject(data, MAX_MESSAGE_BYTES, "stream message");
  const type = doc.type;
  const checkpoint = () => utf8(text(doc.checkpoint, "checkpoint"));
  if (type === "checkpoint") {
    exactKeys(doc, ["type", "checkpoint", "consistency"], "checkpoint message");
    return Object.freeze({ type, checkpoint: checkpoint(), consistency: hex32List(doc.consistency, "consistency") });
  }
  if (type !== "epoch" && type !== "epoch-assets") {
    throw new FormatError(`unknown stream message type ${type === undefined ? "None" : show(type)}`);
  }
  const epoch = type === "epoch";
  exactKeys(doc, [...COMMON, ...(epoch ? ["record"] : ["header", "entries"])], `${type} message`);
  const head = epoch ? { record: b64(doc.record, "record") } : { header: b64(doc.header, "header"), entries: entries(doc.entries) };
  return Object.freeze({
    type,
    ...head,
    checkpoint: checkpoint(),
    inclusion: hex32List(doc.inclusion, "inclusion"),
    reports: reports(doc.reports),
  });
}
