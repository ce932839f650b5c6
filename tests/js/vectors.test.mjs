// The browser verifier (verifier/web/) against the known-answer vectors of
// tests/vectors/ (docs/PROTOCOL.md §8): every case of manifest.json, valid and
// invalid, must end as the Python verifier's does (tests/verifier/test_proof.py),
// with the same check name; hashing.json, record.json and asset-map.json byte for
// byte.
//
//   node --test tests/js/

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { commitment, emptyMap, entryHash, leafHash, mapNodeHash, nodeHash, paddingHash } from "../../verifier/web/hashing.js";
import { fromHex, toHex } from "../../verifier/web/fields.js";
import {
  checkSelection,
  decodeEntry,
  decodeHeader,
  decodeRecord,
  mapRoot,
  verifyMapPath,
  verifyProofFile,
} from "../../verifier/web/solvency.js";

const VECTORS = new URL("../vectors/", import.meta.url);
const read = (name) => readFileSync(new URL(name, VECTORS));
const MANIFEST = JSON.parse(read("manifest.json"));
const KEY = read("verifier-key.txt").toString();

/** The options a manifest case names (PROTOCOL §8): key, user, witnesses, quorum, now. */
function caseOptions(c) {
  return {
    verifierKey: read(c.key ?? "verifier-key.txt").toString(),
    user: c.user,
    witnessKeys: (c.witnesses ?? []).map((name) => read(name).toString()),
    quorum: c.quorum ?? 0,
    now: c.now,
  };
}

test("the valid proof verifies, and the result says what was verified", async () => {
  const result = await verifyProofFile(read(MANIFEST.valid), {
    verifierKey: KEY,
    user: "alice",
    origin: "example.com/solvency/test",
  });
  assert.equal(result.valid, true);
  assert.equal(result.exit, 4); // ETH is unproven: included, not every asset solvent
  assert.equal(result.user, "alice");
  assert.equal(result.epoch, 1n);
  assert.equal(result.log_size, 3n);
  assert.equal(result.time, "2026-09-21T14:13:21Z");
  assert.equal(result.timestamp_ms, 1790000001000n);
  assert.equal(result.solvent, false);
  assert.equal(result.asset_count, 2);
  assert.deepEqual(result.cosigned_by, []);
  assert.deepEqual(
    result.assets.map((a) => [a.asset, a.balance, a.liabilities, a.reserves, a.status, a.units.balance]),
    [
      ["BTC", "1.5", "991.500025", "1000", "solvent", 150000000n],
      ["ETH", "3", "3.000000007", "1", "unproven", 3000000000n],
    ],
  );
  assert.deepEqual(
    result.record.assets.map((a) => a.status),
    ["SOLVENT", "UNPROVEN"],
  );
  assert.deepEqual(result.record.absent, []);
});

test("format 1 is refused by its name", async () => {
  const doc = JSON.parse(read(MANIFEST.valid));
  const result = await verifyProofFile(JSON.stringify({ ...doc, format: "solvency-proof/1" }), { verifierKey: KEY });
  assert.equal(result.check, "format");
  assert.match(result.reason, /solvency-proof\/1 .* no longer read/);
});

test("the cosigned proof verifies with its quorum, and without witnesses", async () => {
  const c = MANIFEST.cosigned;
  const result = await verifyProofFile(read(c.file), caseOptions(c));
  assert.equal(result.valid, true, result.reason);
  assert.deepEqual(
    result.cosigned_by.map((w) => w.name),
    ["witness-a.example", "witness-b.example"],
  );
  for (const w of result.cosigned_by) {
    const after = w.timestamp - result.timestamp_ms / 1000n;
    assert.ok(after >= 0n && after <= 60n, `${w.name} cosigned ${after} s after the record`);
  }
  const plain = await verifyProofFile(read(c.file), { verifierKey: KEY, user: "alice" });
  assert.equal(plain.valid, true);
  assert.deepEqual(plain.cosigned_by, []);
  assert.equal(plain.epoch, result.epoch);
});

for (const c of MANIFEST.invalid) {
  const extra = ["key", "user"].filter((k) => k in c).map((k) => ` ${k}=${c[k]}`).join("");
  test(`${c.file}${extra} fails with ${c.expect}`, async () => {
    const bytes = read(c.file);
    for (const input of [bytes, bytes.toString("utf8")]) {
      const result = await verifyProofFile(input, caseOptions(c));
      assert.equal(result.valid, false, `verified: ${c.file}`);
      assert.equal(result.exit, 1);
      assert.equal(result.check, c.expect, result.reason);
      if (c.expect === "format") assert.match(result.reason, /^malformed: /);
    }
  });
}

test("the witness vectors verify without witnesses: their cosignature lines alone fail", async () => {
  const cases = MANIFEST.invalid.filter((c) => c.witnesses && c.expect !== "format");
  assert.ok(cases.length >= 5);
  for (const c of cases) {
    const result = await verifyProofFile(read(c.file), { verifierKey: KEY, user: "alice" });
    assert.equal(result.valid, true, `${c.file}: ${result.reason}`);
  }
});

test("every check name of the manifest is one the module reports", () => {
  const names = new Set(MANIFEST.invalid.map((c) => c.expect));
  assert.equal(names.size, 19);
  const sources = ["sumtree.js", "rfc9162.js", "checkpoint.js", "cosignature.js", "assetmap.js", "record.js", "proof.js"]
    .map((name) => readFileSync(new URL(`../../verifier/web/${name}`, import.meta.url), "utf8"))
    .join("");
  for (const name of names) {
    if (name !== "format") assert.ok(sources.includes(`"${name}"`), name);
  }
});

test("hashing.json: every tag's known answer", async () => {
  const cases = JSON.parse(read("hashing.json"));
  const hash = {
    commitment: (i) => commitment(i.user, fromHex(i.salt)),
    leaf: (i) => leafHash(i.asset, fromHex(i.commitment), BigInt(i.amount)),
    padding: (i) => paddingHash(i.asset, fromHex(i.padding_key), BigInt(i.slot)),
    node: (i) => nodeHash(fromHex(i.left), BigInt(i.left_sum), fromHex(i.right), BigInt(i.right_sum)),
    "asset-map-entry": (i) => entryHash(fromHex(i.entry)),
    "asset-map-node": (i) => mapNodeHash(fromHex(i.left), fromHex(i.right)),
    "asset-map-empty": () => emptyMap(),
  };
  assert.deepEqual(cases.map((c) => c.name).sort(), Object.keys(hash).sort());
  for (const c of cases) {
    assert.equal(createHash("sha256").update(Buffer.from(c.message, "hex")).digest("hex"), c.digest);
    assert.equal(toHex(await hash[c.name](c.inputs)), c.digest, c.name);
  }
});

test("record.json: the record decodes to its fields, header and entries", async () => {
  const vector = JSON.parse(read("record.json"));
  const record = await decodeRecord(fromHex(vector.hex));
  const f = vector.fields;
  assert.equal(record.epoch, BigInt(f.epoch));
  assert.equal(record.timestampMs, BigInt(f.timestamp_ms));
  assert.equal(record.maxReserveAgeMs, BigInt(f.max_reserve_age_ms));
  assert.equal(record.assetCount, 2);
  assert.equal(toHex(record.header.bytes), vector.header);
  assert.equal(toHex(record.header.assetMapRoot), vector.asset_map_root);
  assert.deepEqual(record.entries.map(toHex), vector.entries);
  assert.equal(vector.hex, vector.header + vector.entries.join(""));
  assert.deepEqual(
    record.assets.map((a) => ({
      asset: a.asset,
      decimals: a.decimals,
      height: a.height,
      liabilities: String(a.liabilities),
      reserves: String(a.reserves),
      root: toHex(a.root),
      status: a.status,
      sources: a.sources.map((s) => ({
        amount: String(s.amount),
        as_of_ms: Number(s.asOfMs),
        key_id: s.keyId.toString(16).padStart(8, "0"),
        name: s.name,
        report_hash: toHex(s.reportHash),
      })),
    })),
    f.assets,
  );
  assert.deepEqual(
    record.assets.map((a) => a.sources.map((s) => s.attested)),
    [[true, true], [false]],
  );
  const header = decodeHeader(fromHex(vector.header));
  assert.deepEqual(header, record.header);
  assert.deepEqual(
    vector.entries.map((e) => decodeEntry(fromHex(e), header)),
    record.assets,
  );
  assert.equal(toHex(await mapRoot(record.entries)), vector.asset_map_root);
});

test("record.json changed in any rule of §4.1 does not decode", async () => {
  const vector = JSON.parse(read("record.json"));
  const hex = vector.hex;
  const at = (offset, byte) => hex.slice(0, 2 * offset) + byte + hex.slice(2 * offset + 2);
  const ethStatus = hex.indexOf("3b9aca0002") / 2 + 4; // ETH: reserves, then status UNPROVEN
  const btcAsOf = hex.indexOf("000001a0c4506818") / 2; // cold-1's as_of_ms
  const cases = {
    "version 1": [at(4, "01"), /version 1/],
    "version 3": [at(4, "03"), /version 3/],
    "bad magic": [at(0, "54"), /magic/],
    "a trailing byte": [`${hex}00`, /trailing/],
    truncated: [hex.slice(0, -2), /truncated/],
    "one asset more than its entries": [at(30, "03"), /truncated/],
    "one asset less than its entries": [at(30, "01"), /trailing/],
    "another asset map root": [at(40, "00"), /asset map root/],
    "status SOLVENT for a stale source": [at(ethStatus, "00"), /contradicts/],
    "an unknown status": [at(ethStatus, "03"), /unknown status/],
    "a source dated after the epoch": [at(btcAsOf + 3, "ff"), /after the epoch/],
    "a height above 32": [at(hex.indexOf("0803e937") / 2 + 1, "21"), /height/],
    "decimals above 36": [at(hex.indexOf("0803e937") / 2, "25"), /decimals/],
    "an asset id in lower case": [at(hex.indexOf("425443") / 2, "62"), /asset id/],
  };
  for (const [what, [changed, message]] of Object.entries(cases)) {
    assert.notEqual(changed, hex, what);
    await assert.rejects(decodeRecord(fromHex(changed)), { name: "FormatError", message }, what);
  }
  // a header alone, and an entry read with its header
  const header = decodeHeader(fromHex(vector.header));
  for (const bad of [vector.header.slice(0, -2), `${vector.header}00`, `00${vector.header.slice(2)}`]) {
    assert.throws(() => decodeHeader(fromHex(bad)), { name: "FormatError" }, bad);
  }
  const [btc, eth] = vector.entries;
  assert.throws(() => decodeEntry(fromHex(`${btc}00`), header), { name: "FormatError", message: /trailing bytes after asset entry/ });
  assert.throws(() => decodeEntry(fromHex(btc.slice(0, -2)), header), { name: "FormatError", message: /asset entry is truncated/ });
  // the same entry under a header of an epoch before its sources' reports
  const earlier = decodeHeader(fromHex(vector.header.replace("000001a0c4506fe8", "000001a0c4500000")));
  assert.throws(() => decodeEntry(fromHex(btc), earlier), { name: "FormatError", message: /after the epoch/ });
  // ETH's hot source is stale a day later: UNPROVEN holds, SOLVENT would not
  const later = decodeHeader(fromHex(vector.header.replace("000001a0c4506fe8", "000001a0c9000000")));
  assert.equal(decodeEntry(fromHex(eth), later).status, "UNPROVEN");
});

test("asset-map.json: leaf hashes, root, every map path, and what proves each choice", async () => {
  const vector = JSON.parse(read("asset-map.json"));
  const entries = vector.entries.map(fromHex);
  const header = decodeHeader(fromHex(vector.header));
  assert.equal(toHex(header.assetMapRoot), vector.root);
  assert.deepEqual((await Promise.all(entries.map(entryHash))).map(toHex), vector.leaf_hashes);
  assert.equal(toHex(await mapRoot(entries)), vector.root);
  assert.equal(toHex(await mapRoot([])), toHex(await emptyMap()));
  const check = async (...args) => {
    try {
      await verifyMapPath(...args);
      return "ok";
    } catch (error) {
      return error.check ?? error.name;
    }
  };
  const root = fromHex(vector.root);
  for (const [i, path] of vector.paths.entries()) {
    const hashes = path.map(fromHex);
    assert.equal(await check(entries[i], BigInt(i), hashes, 5, root), "ok", `entry ${i}`);
    assert.equal(await check(entries[i], BigInt(i + 1), hashes, 5, root), "asset-map-mismatch");
    assert.equal(await check(entries[i], 5n, hashes, 5, root), "asset-map-mismatch"); // beyond the map
    assert.equal(await check(entries[i], BigInt(i), hashes.slice(1), 5, root), "asset-map-mismatch");
    assert.equal(await check(entries[i], BigInt(i), [...hashes, root], 5, root), "asset-map-mismatch");
    assert.equal(await check(entries[(i + 1) % 5], BigInt(i), hashes, 5, root), "asset-map-mismatch");
    assert.equal(await check(entries[i], BigInt(i), hashes, 4, root), "asset-map-mismatch"); // another count
  }
  const mapEntry = (i) => ({ entry: entries[i], index: BigInt(i), path: vector.paths[i].map(fromHex) });
  for (const { chosen, indices } of vector.selections) {
    const proven = await checkSelection(header, indices.map(mapEntry), chosen);
    const ids = proven.assets.map((a) => a.asset);
    assert.deepEqual([...ids, ...proven.absent].sort(), [...new Set(chosen)].sort(), chosen.join());
    assert.ok(ids.every((id) => chosen.includes(id)));
    for (const drop of indices) {
      const fewer = indices.filter((i) => i !== drop).map(mapEntry);
      await assert.rejects(checkSelection(header, fewer, chosen), { check: "asset-map-incomplete" }, `${chosen} without ${drop}`);
    }
  }
});
