// The strict JSON dialect and canonical base64 of docs/PROTOCOL.md §6, user ids
// (§2.2), and the result objects' formatting and usage errors, as
// tests/verifier/test_fields.py, test_proof.py and test_hashing.py hold the Python
// verifier to them.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { b64, loadObject, toBase64 } from "../../verifier/web/fields.js";
import { checkAssetId, checkUserId, printableId } from "../../verifier/web/hashing.js";
import { FormatError } from "../../verifier/web/errors.js";
import { formatAmount, formatTime, verifyProofFile } from "../../verifier/web/solvency.js";

const VECTORS = new URL("../vectors/", import.meta.url);
const VALID = readFileSync(new URL("proof-valid.json", VECTORS), "utf8");
const KEY = readFileSync(new URL("verifier-key.txt", VECTORS), "utf8");
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** A seeded generator (mulberry32): the same cases every run. */
function random(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const load = (text, max = 1 << 20) => loadObject(text, max, "doc");
const check = async (text, options = {}) => (await verifyProofFile(text, { verifierKey: KEY, ...options })).check;

function randomValue(next, depth) {
  const pick = Math.floor(next() * (depth > 2 ? 4 : 6));
  const chars = ["a", "é", "\u{1F600}", '"', "\\", "\n", "\u2028", "/", "\u0000", "字"];
  const str = () => Array.from({ length: Math.floor(next() * 5) }, () => chars[Math.floor(next() * 10)]).join("");
  if (pick === 0) return [null, true, false][Math.floor(next() * 3)];
  if (pick === 1) return Math.floor(next() * 2 ** 53);
  if (pick === 2 || pick === 3) return str();
  if (pick === 4) return Array.from({ length: Math.floor(next() * 4) }, () => randomValue(next, depth + 1));
  return Object.fromEntries(Array.from({ length: Math.floor(next() * 4) }, () => [str(), randomValue(next, depth + 1)]));
}

const plain = (v) =>
  typeof v === "bigint"
    ? Number(v)
    : Array.isArray(v)
      ? v.map(plain)
      : v !== null && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
        : v;

test("loadObject reads what JSON.stringify writes", () => {
  const next = random(1);
  for (let i = 0; i < 300; i++) {
    const doc = randomValue(next, 5);
    const obj = { doc, n: i };
    const text = JSON.stringify(obj, null, i % 2 ? 1 : undefined);
    assert.deepEqual(plain(load(text)), JSON.parse(text));
    assert.deepEqual(plain(load(new TextEncoder().encode(text))), JSON.parse(text));
  }
  assert.equal(load('{"n": 99999999999999999999}').n, 99999999999999999999n); // 20 digits, exact
  assert.equal(Object.getPrototypeOf(load('{"__proto__": {"a": 1}}')), null);
});

test("duplicate keys are refused, at any depth, after unescaping", () => {
  for (const text of ['{"a": 1, "a": 1}', '{"a": {"b": 1, "b": 2}}', '{"a": [{"b": 1, "b": 2}]}', '{"a": 1, "\\u0061": 2}']) {
    assert.throws(() => load(text), { name: "FormatError", message: /appears twice/ }, text);
  }
});

test("numbers other than unsigned integers of 1-20 digits are refused", () => {
  for (const literal of ["-1", "-0", "1.0", "1e3", "1E3", "NaN", "-Infinity", "Infinity", "1".repeat(21)]) {
    assert.throws(() => load(`{"n": ${literal}}`), { name: "FormatError", message: /number/ }, literal);
  }
  for (const text of ['{"n": 01}', '{"n": 1.}', '{"n": -}', '{"n": +1}', '{"n": 0x10}']) {
    assert.throws(() => load(text), FormatError, text);
  }
});

test("what is not JSON, or not one object, is refused", () => {
  const bad = [
    "", "[]", '"a"', "1", "{", '{"a"}', '{"a": 1,}', '{"a": [1,]}', "{'a': 1}", '{"a": 1} x', '{"a": 1}{}',
    '{"a": "\u0001"}', '{"a": "\\x41"}', '{"a": "\\u12"}', '{"a": tru}', '{"a": "unterminated}', "{\u00a0}",
    `{"a": ${"[".repeat(600)}${"]".repeat(600)}}`,
  ];
  for (const text of bad) assert.throws(() => load(text), FormatError, JSON.stringify(text));
  assert.deepEqual(plain(load(' \t\r\n{ "a" : [ ] } \n')), { a: [] });
  assert.equal(load('{"a": "\\ud83d\\ude00\\/\\b"}').a, "\u{1F600}/\b");
});

test("strings of Unicode scalar values only", () => {
  for (const text of ['{"a": "\\ud800"}', '{"a": "\\udc00x"}', '{"a": "\\ud800\\u0041"}', '{"\\ud800": 1}']) {
    assert.throws(() => load(text), { name: "FormatError", message: /lone surrogate/ }, text);
  }
  assert.throws(() => load('{"a": "\ud800"}'), { message: /not UTF-8/ }); // a string input holding one
});

test("the size limit counts UTF-8 bytes", () => {
  const text = `{"a": "${"é".repeat(10)}"}`; // 19 characters, 29 bytes
  assert.equal(load(text, 29).a, "é".repeat(10));
  assert.throws(() => load(text, 28), { message: /larger/ });
  assert.throws(() => load(new TextEncoder().encode(text), 28), { message: /larger/ });
});

test("only UTF-8 without a byte order mark is read", async () => {
  const bytes = new TextEncoder().encode(VALID);
  const utf16 = new Uint8Array([0xff, 0xfe, ...Array.from(VALID, (c) => [c.charCodeAt(0) & 0xff, c.charCodeAt(0) >> 8]).flat()]);
  const latin1 = Uint8Array.from(Buffer.from(VALID.replace('"alice"', '"al\u00e9"'), "latin1"));
  const surrogate = Buffer.concat([Buffer.from(VALID.replace('"alice"', '"al')), Buffer.from([0xed, 0xa0, 0x80, 0x22])]);
  for (const input of [
    new Uint8Array([0xef, 0xbb, 0xbf, ...bytes]),
    "\ufeff" + VALID,
    utf16,
    latin1,
    surrogate,
    new Uint8Array([0x00, 0x00, 0x00, 0x7b]),
  ]) {
    assert.equal(await check(input), "format");
  }
  const bom = await verifyProofFile(new Uint8Array([0xef, 0xbb, 0xbf, ...bytes]), { verifierKey: KEY });
  assert.match(bom.reason, /byte order mark/);
  assert.equal((await verifyProofFile(bytes.buffer, { verifierKey: KEY })).valid, true); // an ArrayBuffer
  assert.equal((await verifyProofFile(new Blob([bytes]), { verifierKey: KEY })).valid, true); // a File
});

test("numbers, literals and strings outside the dialect fail a proof as format", async () => {
  for (const [old, replacement] of [
    ['"slot":5', '"slot":5.0'],
    ['"slot":5', '"slot":5e0'],
    ['"slot":5', '"slot":-0'],
    ['"slot":5', '"slot":NaN'],
    ['"slot":5', '"slot":Infinity'],
    ['"slot":5', '"slot":true'],
    ['"slot":5', '"slot":"5"'],
    ['"user":"alice"', '"user":"\\udc00alice"'],
    ['"user":"alice"', '"user":null'],
    ['"user":"alice"', '"user":"carol","user":"alice"'],
    ['"index":0,', '"index":1,"index":0,'],
    ['"index":0,', '"index":-1,'],
    ['"index":0,', '"index":"0",'],
    ['"index":0,', '"index":123456789012345678901,'],
    ['"map_path":[', '"map_path":"'],
    ['"salt":"03', '"salt":"0A'],
    ['"header":"', '"header":" '],
    ['"entry":"', '"entry":" '],
    ['"balance":"150000000"', '"balance":150000000'],
  ]) {
    assert.ok(VALID.includes(old), old);
    assert.equal(await check(VALID.replace(old, replacement)), "format", replacement);
  }
});

test("values out of range parse and fail the check that bounds them", async () => {
  const cases = [
    ["balance", String(2n ** 64n - 1n), "root-mismatch"],
    ["balance", String(2n ** 64n), "leaf-range"],
    ["balance", "9".repeat(39), "leaf-range"],
    ["slot", "7", "root-mismatch"],
    ["slot", "8", "slot-range"],
    ["slot", String(2n ** 64n - 1n), "slot-range"],
    ["slot", String(10n ** 20n - 1n), "slot-range"],
  ];
  for (const [field, value, expect] of cases) {
    const literal = field === "slot" ? value : `"${value}"`;
    const text = VALID.replace(field === "slot" ? '"slot":5' : '"balance":"150000000"', `"${field}":${literal}`);
    assert.equal(await check(text), expect, `${field} ${value}`);
  }
  const doc = JSON.parse(VALID);
  doc.assets[0].path[1][1] = "9".repeat(39);
  assert.equal(await check(JSON.stringify(doc)), "sibling-sum-range");
  doc.assets = [];
  assert.equal(await check(JSON.stringify(doc)), "format");
});

test("canonical base64 only", () => {
  const next = random(2);
  for (let i = 0; i < 300; i++) {
    const raw = Uint8Array.from({ length: Math.floor(next() * 40) }, () => Math.floor(next() * 256));
    const text = Buffer.from(raw).toString("base64");
    assert.equal(toBase64(raw), text);
    assert.deepEqual(b64(text, "x"), raw);
  }
  for (let i = 0; i < 3000; i++) {
    const text = Array.from({ length: Math.floor(next() * 9) }, () => (ALPHABET + "=")[Math.floor(next() * 65)]).join("");
    let raw;
    try {
      raw = b64(text, "x");
    } catch (error) {
      assert.ok(error instanceof FormatError);
      continue;
    }
    assert.equal(Buffer.from(raw).toString("base64"), text); // accepted: the text of its bytes
  }
  for (const text of ["QB==", "QUF=", "QQ", "QQ=", "QQ===", "Q Q==", "QQ==\n", "\u00c4Q==", "-_==", 7]) {
    assert.throws(() => b64(text, "x"), FormatError, String(text));
  }
  assert.deepEqual(b64("QA==", "x"), Uint8Array.of(0x40));
  assert.deepEqual(b64("", "x"), new Uint8Array(0));
});

test("user ids: what prints like another is refused", () => {
  for (const user of [
    "", "a\u0000b", "tab\tuser", "x".repeat(256), "\ud800", "é".repeat(128), "alice\u200b", "\u202eecila",
    "al\u2066ice", "\ufeffalice", "alice\u2028", "alice\u0085", "alice ", " alice", "\u3000alice", "alice\u00a0",
    "jose\u0301", "\u{E0001}tag", 7,
  ]) {
    assert.throws(() => checkUserId(user), FormatError, printableId(String(user)));
  }
  assert.deepEqual(checkUserId("josé@example.com"), new TextEncoder().encode("josé@example.com"));
  assert.equal(checkUserId("é".repeat(127)).length, 254);
  assert.equal(checkUserId("a b").length, 3);
  assert.equal(checkUserId("\u{1F600}").length, 4);
  for (const asset of ["", "btc", "B TC", "-BTC", "A".repeat(17), "BTC\n", "É"]) {
    assert.throws(() => checkAssetId(asset), FormatError, asset);
  }
});

test("printableId escapes what a screen would hide or reorder", () => {
  assert.equal(printableId("josé@example.com"), "josé@example.com");
  assert.equal(printableId("alice\u200b"), "alice\\u200b");
  assert.equal(printableId("\u202eevil\n"), "\\u202eevil\\x0a");
  assert.equal(printableId("a\\u200b"), "a\\\\u200b");
  assert.equal(printableId("\u{E0001}"), "\\U000e0001");
  assert.equal(printableId("a b\u00a0"), "a b\\xa0");
});

test("amounts and times are printed exactly, as the CLI prints them", () => {
  assert.equal(formatAmount(150000000n, 8), "1.5");
  assert.equal(formatAmount(0n, 8), "0");
  assert.equal(formatAmount(1000n, 0), "1000");
  assert.equal(formatAmount(1000000000000n, 9), "1000");
  assert.equal(formatAmount(1n, 36), `0.${"0".repeat(35)}1`);
  assert.equal(formatAmount(2n ** 128n - 1n, 18), "340282366920938463463.374607431768211455");
  assert.equal(formatTime(0n), "1970-01-01T00:00:00Z");
  assert.equal(formatTime(951782399999n), "2000-02-28T23:59:59Z");
  assert.equal(formatTime(951868800000n), "2000-03-01T00:00:00Z");
  assert.equal(formatTime(1790000001000n), "2026-09-21T14:13:21Z");
  const next = random(3);
  assert.equal(formatTime(8000000000000000n), "255479-11-28T14:13:20Z"); // as Python's strftime
  assert.equal(formatTime(2n ** 64n - 1n), "584556019-04-03T14:25:51Z"); // exact: no float
  for (let i = 0; i < 200; i++) {
    const ms = Math.floor(next() * 253402300800000); // up to 9999-12-31, Date's ISO form
    assert.equal(formatTime(BigInt(ms)), new Date(ms - (ms % 1000)).toISOString().replace(".000Z", "Z"));
  }
});

test("options that cannot be used are usage errors, before the file is read", async () => {
  const usage = async (options, input = VALID) => {
    const result = await verifyProofFile(input, { verifierKey: KEY, ...options });
    assert.equal(result.valid, null, JSON.stringify(Object.keys(options)));
    assert.equal(result.exit, 2);
    assert.equal(result.error, "usage");
    return result.reason;
  };
  const witnesses = readFileSync(new URL("witness-keys.txt", VECTORS), "utf8");
  assert.match(await usage({ verifierKey: "example.com/solvency/test+cc701f44+AXm1Vi6P5lT5QHixEuipi6eQH4U65pW+1+DjkQutBJZk" }), /id does not match/);
  assert.match(await usage({ verifierKey: witnesses.split("\n")[0] }), /type 0x01/);
  assert.match(await usage({ verifierKey: undefined }), /verifierKey/);
  assert.match(await usage({ witnessKeys: [witnesses], quorum: 3 }), /quorum 3/);
  assert.match(await usage({ quorum: 1 }), /quorum 1/);
  assert.match(await usage({ witnessKeys: [witnesses, witnesses.split("\n")[0]] }), /two keys of witness-a/);
  assert.match(await usage({ witnessKeys: [KEY] }), /type 0x04/);
  assert.match(await usage({ witnessKeys: ["\n"] }), /no key/);
  assert.match(await usage({ now: "soon" }), /now/);
  assert.match(await usage({}, 42), /input/);
  assert.match(await usage({ quorum: 1 }, "{"), /quorum/); // the options come first, as in the CLI
  const defaults = await verifyProofFile(VALID, { verifierKey: `  ${KEY}\n`, witnessKeys: [witnesses] });
  assert.equal(defaults.check, "witness-quorum"); // the quorum defaults to every witness given
});
