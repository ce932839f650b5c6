// An independent checker of C2SP signed notes and cosignature/v1 lines,
// written from the C2SP texts (signed-note, tlog-checkpoint,
// tlog-cosignature) alone, in another language than the prover and the
// verifier, with Node's own crypto. It shares no code with this repository.
//
//   node c2sp_check.mjs INPUT.json
//
// INPUT: {"note": "<signed checkpoint>", "log_key": "<vkey>",
//         "witness_keys": ["<vkey>", ...]}
// Prints {"origin", "size", "log_signature": bool, "cosigned_by":
// [{"name", "time"}], "invalid": [names]} and exits 0, or 1 on a
// malformed input.

import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function parseVkey(text) {
  // <name>+<hex key id>+<base64(type || public key)>
  const parts = text.trim().split("+");
  const name = parts[0];
  const encoded = parts.slice(2).join("+"); // base64 may hold "+"
  const raw = Buffer.from(encoded, "base64");
  if (parts.length < 3 || raw.toString("base64") !== encoded || raw.length !== 33) {
    throw new Error(`malformed verifier key ${text}`);
  }
  const keyId = createHash("sha256")
    .update(Buffer.concat([Buffer.from(name + "\n", "utf8"), raw]))
    .digest()
    .subarray(0, 4);
  if (keyId.toString("hex") !== parts[1]) throw new Error(`key id mismatch in ${text}`);
  const publicKey = createPublicKey({
    key: Buffer.concat([ED25519_SPKI_PREFIX, raw.subarray(1)]),
    format: "der",
    type: "spki",
  });
  return { name, type: raw[0], keyId, publicKey };
}

function splitNote(note) {
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) throw new Error("not a signed note");
  const body = note.slice(0, cut + 1);
  const lines = note.slice(cut + 2, -1).split("\n");
  return {
    body,
    signatures: lines.map((line) => {
      if (!line.startsWith("\u2014 ")) throw new Error(`bad signature line ${line}`);
      const [name, encoded] = line.slice(2).split(" ");
      return { name, raw: Buffer.from(encoded, "base64") };
    }),
  };
}

function main() {
  const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const log = parseVkey(input.log_key);
  const witnesses = input.witness_keys.map(parseVkey);
  const { body, signatures } = splitNote(input.note);
  const [origin, size] = body.split("\n");
  const result = { origin, size: Number(size), log_signature: false, cosigned_by: [], invalid: [] };
  for (const { name, raw } of signatures) {
    const id = raw.subarray(0, 4);
    if (log.type === 0x01 && name === log.name && id.equals(log.keyId)) {
      // signed-note: Ed25519 over the note body
      const ok = verify(null, Buffer.from(body, "utf8"), log.publicKey, raw.subarray(4));
      if (ok) result.log_signature = true;
      else result.invalid.push(name);
      continue;
    }
    const witness = witnesses.find((w) => w.name === name && w.keyId.equals(id));
    if (!witness || witness.type !== 0x04 || raw.length !== 76) continue;
    // cosignature/v1: "cosignature/v1\ntime <t>\n" || body, timestamp u64 big-endian
    const time = raw.readBigUInt64BE(4);
    const message = Buffer.from(`cosignature/v1\ntime ${time}\n${body}`, "utf8");
    if (verify(null, message, witness.publicKey, raw.subarray(12))) {
      result.cosigned_by.push({ name, time: Number(time) });
    } else {
      result.invalid.push(name);
    }
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

try {
  main();
} catch (error) {
  process.stderr.write(`${error.message}\n`);
  process.exit(1);
}
