// The browser verifier's answers to cases the Python test suite makes
// (tests/verifier/test_js_verifier.py), for comparison with the Python verifier's:
//
//   node tests/js/differential.mjs CASES.json   ->   a JSON list of answers
//
// A case is
//   {"kind": "proof", "data": <base64 of the file's bytes>, "options": {verifierKey,
//    user, witnessKeys, quorum, now}}: the check name ("valid" if it verifies);
//   {"kind": "record", "hex"}: a full record, "ok " and its fields;
//   {"kind": "header", "hex"}: a record header, "ok " and its fields;
//   {"kind": "entry", "header": hex, "entry": hex}: an entry read with its header,
//    "ok " and its fields;
//   {"kind": "frames", "frames": [text, ...], "key": verifier key, "assets": [id, ...]
//    or null, "checkpoints": bool}: the frames verified in order under that
//    subscription, the check name of the first that fails, else "ok " and what
//    the last one proves, with the hashes of the signed reports then held;
//   {"kind": "user", "id"}: "ok";
// or "format" for malformed input. Not a test file of its own (node --test skips it).

import { readFileSync } from "node:fs";

import { checkUserId } from "../../verifier/web/hashing.js";
import { fromHex, toHex } from "../../verifier/web/fields.js";
import {
  boundReports,
  checkEpoch,
  decodeEntry,
  decodeHeader,
  decodeRecord,
  parseMessage,
  parseVerifierKey,
  verifyProofFile,
} from "../../verifier/web/solvency.js";

/** A header in the form the Python side writes it. */
export const headerFields = (h) => `${h.version}/${h.epoch}/${h.timestampMs}/${h.maxReserveAgeMs}/${h.assetCount}/${toHex(h.assetMapRoot)}`;

/** An asset entry in the form the Python side writes it. */
export function assetFields(a) {
  const sources = a.sources.map((s) => `${s.name}:${s.amount}:${s.asOfMs}:${s.keyId}:${toHex(s.reportHash)}`).join("|");
  return `${a.asset},${a.decimals},${a.height},${toHex(a.root)},${a.liabilities},${a.reserves},${a.status},${sources}`;
}

/** A decoded full record in the form the Python side writes it. */
export const recordFields = (r) => `${headerFields(r.header)}/${r.assets.map(assetFields).join(";")}`;

async function frames(c) {
  const key = await parseVerifierKey(c.key);
  const subscription = { assets: c.assets, checkpoints: c.checkpoints };
  let state = null;
  let held = new Map();
  let audit;
  for (const frame of c.frames) {
    const message = parseMessage(frame);
    audit = await checkEpoch(state, message, key, { subscription });
    state = audit.state;
    held = await boundReports(held, audit.record, message.reports);
  }
  const record = audit.record;
  const assets = record === null ? "-" : record.assets.map((a) => a.asset).join(",");
  const absent = (record?.absent ?? []).join(",");
  const findings = audit.findings.map((f) => `${f.asset}:${f.status}`).join(",");
  return `ok ${audit.epoch}/${state.timestampMs}/${assets}/${absent}/${findings}/${[...held.keys()].join(",")}`;
}

async function answer(c) {
  if (c.kind === "proof") {
    const result = await verifyProofFile(Buffer.from(c.data, "base64"), c.options);
    if (result.valid === null) throw new Error(`usage: ${result.reason}`);
    return result.valid ? "valid" : result.check;
  }
  try {
    if (c.kind === "record") return `ok ${recordFields(await decodeRecord(fromHex(c.hex)))}`;
    if (c.kind === "header") return `ok ${headerFields(decodeHeader(fromHex(c.hex)))}`;
    if (c.kind === "entry") return `ok ${assetFields(decodeEntry(fromHex(c.entry), decodeHeader(fromHex(c.header))))}`;
    if (c.kind === "frames") return await frames(c);
    checkUserId(c.id);
    return "ok";
  } catch (error) {
    if (error.check !== undefined) return error.check;
    if (error.name !== "FormatError") throw error;
    return "format";
  }
}

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const answers = [];
for (const c of cases) answers.push(await answer(c));
process.stdout.write(JSON.stringify(answers));
