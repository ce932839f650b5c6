// The browser verifier's answers to cases the Python test suite makes
// (tests/verifier/test_js_verifier.py), for comparison with the Python verifier's:
//
//   node tests/js/differential.mjs CASES.json   ->   a JSON list of answers
//
// A case is {"kind": "proof", "data": <base64 of the file's bytes>, "options":
// {verifierKey, user, witnessKeys, quorum, now}}, answered by the check name
// ("valid" if it verifies, "format" if malformed); {"kind": "record", "hex"},
// answered "format" or "ok " and the record's fields; {"kind": "user", "id"},
// answered "ok" or "format". Not a test file of its own (node --test skips it).

import { readFileSync } from "node:fs";

import { checkUserId } from "../../verifier/web/hashing.js";
import { fromHex, toHex } from "../../verifier/web/fields.js";
import { decodeRecord, verifyProofFile } from "../../verifier/web/solvency.js";

/** A decoded record in the form the Python side writes it. */
export function recordFields(r) {
  const sources = (a) =>
    a.sources.map((s) => `${s.name}:${s.amount}:${s.asOfMs}:${s.keyId}:${toHex(s.reportHash)}`).join("|");
  const assets = r.assets.map(
    (a) => `${a.asset},${a.decimals},${a.height},${toHex(a.root)},${a.liabilities},${a.reserves},${a.status},${sources(a)}`,
  );
  return `${r.epoch}/${r.timestampMs}/${r.maxReserveAgeMs}/${assets.join(";")}`;
}

async function answer(c) {
  if (c.kind === "proof") {
    const result = await verifyProofFile(Buffer.from(c.data, "base64"), c.options);
    if (result.valid === null) throw new Error(`usage: ${result.reason}`);
    return result.valid ? "valid" : result.check;
  }
  try {
    if (c.kind === "record") return `ok ${recordFields(decodeRecord(fromHex(c.hex)))}`;
    checkUserId(c.id);
    return "ok";
  } catch (error) {
    if (error.name !== "FormatError") throw error;
    return "format";
  }
}

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const answers = [];
for (const c of cases) answers.push(await answer(c));
process.stdout.write(JSON.stringify(answers));
