// The log's side in the browser verifier: RFC 9162 proofs against a reference
// written from the RFC's recursive definitions (builders.mjs), C2SP signed notes
// and checkpoints (the published Go vector, and notes signed with Node's own
// crypto), witness cosignatures, and the checkpoint and consistency results an
// auditor's page uses. Root stream frames: stream.test.mjs.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { b64root, body, cosignature, LOG, mth, note, ORIGIN, path, sha, signature, signer, subproof } from "./builders.mjs";
import {
  checkConsistency,
  EMPTY_ROOT,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  parseVerifierKey,
  prefixRoot,
  verifyCheckpoint,
  verifyConsistency,
  verifyInclusion,
} from "../../verifier/web/solvency.js";

const VECTORS = new URL("../vectors/", import.meta.url);
const read = (name) => readFileSync(new URL(name, VECTORS), "utf8");
const KEY = read("verifier-key.txt");
const WITNESSES = read("witness-keys.txt");
const COSIGNED = JSON.parse(read("proof-cosigned.json"));
const NOW = 1790000100;

const leaf = (i) => sha(Buffer.of(0), Buffer.from(`leaf ${i}`));
const OTHER = signer(33, ORIGIN, 0x01);
const WITNESS_A = signer(0x41, "witness-a.example", 0x04);

async function fails(promise) {
  try {
    await promise;
  } catch (error) {
    return error.check ?? (error.name === "FormatError" ? "format" : `${error.name}: ${error.message}`);
  }
  return "ok";
}

test("inclusion proofs: the reference's verify, any change fails", async () => {
  for (let n = 1; n <= 16; n++) {
    const leaves = Array.from({ length: n }, (_, i) => leaf(i));
    const root = mth(leaves);
    for (let i = 0; i < n; i++) {
      const proof = path(i, leaves);
      assert.equal(await fails(verifyInclusion(leaves[i], i, n, proof, root)), "ok", `${i} of ${n}`);
      assert.equal(await fails(verifyInclusion(leaves[i], BigInt(i), BigInt(n), proof, root)), "ok");
      if (proof.length) {
        const flipped = proof.map((h, j) => (j === proof.length - 1 ? sha(h) : h));
        assert.equal(await fails(verifyInclusion(leaves[i], i, n, flipped, root)), "inclusion-root-mismatch");
        assert.equal(await fails(verifyInclusion(leaves[i], i, n, proof.slice(1), root)), "inclusion-proof-size");
      }
      assert.equal(await fails(verifyInclusion(leaves[i], i, n, [...proof, root], root)), "inclusion-proof-size");
      assert.notEqual(await fails(verifyInclusion(sha(leaves[i]), i, n, proof, root)), "ok");
    }
    assert.equal(await fails(verifyInclusion(leaves[0], n, n, [], root)), "inclusion-index");
  }
  assert.equal(await fails(verifyInclusion(leaf(0), 0, 1, [], Buffer.alloc(31))), "format");
});

test("consistency proofs: the reference's verify, any change fails", async () => {
  const leaves = Array.from({ length: 16 }, (_, i) => leaf(i));
  for (let n = 1; n <= 16; n++) {
    const newRoot = mth(leaves.slice(0, n));
    assert.equal(await fails(verifyConsistency(0, n, EMPTY_ROOT, newRoot, [])), "ok");
    assert.equal(await fails(verifyConsistency(0, n, newRoot, newRoot, [])), "consistency-root-mismatch");
    assert.equal(await fails(verifyConsistency(n, n, newRoot, newRoot, [])), "ok");
    assert.equal(await fails(verifyConsistency(n, n, newRoot, sha(newRoot), [])), "consistency-root-mismatch");
    assert.equal(await fails(verifyConsistency(n, n, newRoot, newRoot, [newRoot])), "consistency-proof-size");
    assert.equal(await fails(verifyConsistency(n + 1, n, newRoot, newRoot, [])), "consistency-sizes");
    for (let m = 1; m < n; m++) {
      const oldRoot = mth(leaves.slice(0, m));
      const proof = subproof(m, leaves.slice(0, n), true);
      assert.equal(await fails(verifyConsistency(m, n, oldRoot, newRoot, proof)), "ok", `${m} to ${n}`);
      for (let j = 0; j < proof.length; j++) {
        const flipped = proof.map((h, x) => (x === j ? sha(h) : h));
        assert.equal(await fails(verifyConsistency(m, n, oldRoot, newRoot, flipped)), "consistency-root-mismatch");
      }
      assert.equal(await fails(verifyConsistency(m, n, oldRoot, newRoot, proof.slice(1))), "consistency-proof-size");
      assert.equal(await fails(verifyConsistency(m, n, oldRoot, newRoot, [...proof, oldRoot])), "consistency-proof-size");
      assert.equal(await fails(verifyConsistency(m, n, sha(oldRoot), newRoot, proof)), "consistency-root-mismatch");
      assert.equal(await fails(verifyConsistency(m, n, oldRoot, sha(newRoot), proof)), "consistency-root-mismatch");
    }
  }
});

test("the last leaf's inclusion path folds to the root before it: a consistency proof", async () => {
  const leaves = Array.from({ length: 40 }, (_, i) => leaf(i));
  for (let n = 0; n < 40; n++) {
    const last = path(n, leaves.slice(0, n + 1));
    const before = mth(leaves.slice(0, n));
    assert.deepEqual(Buffer.from(await prefixRoot(last)), before, `${n} leaves`);
    if (n === 0) continue;
    // what the consistency proof from n to n + 1 proves, and it holds no other hash
    const proof = subproof(n, leaves.slice(0, n + 1), true);
    assert.equal(await fails(verifyConsistency(n, n + 1, before, mth(leaves.slice(0, n + 1)), proof)), "ok");
    const hashes = new Set([...proof, before].map((h) => h.toString("hex")));
    assert.ok(last.every((h) => hashes.has(h.toString("hex"))), `${n} leaves`);
    // a log whose first n leaves differ folds to another root
    const other = leaves.slice(0, n + 1).map((h, i) => (i === n - 1 ? sha(h) : h));
    assert.notDeepEqual(Buffer.from(await prefixRoot(path(n, other))), before);
  }
  assert.equal(await fails(prefixRoot([Buffer.alloc(31)])), "format");
});

test("the Go signed-note vector, and the test vectors' checkpoint", async () => {
  const goKey = await parseVerifierKey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
  assert.equal(goKey.keyId, 0xc74f20a3);
  const goNote =
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n" +
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
  assert.match((await openNote(goNote, [goKey])).bodyText, /^If you think/);
  assert.equal(await fails(openNote(goNote.replace("answer", "Answer"), [goKey])), "signature-invalid");

  assert.equal((await parseVerifierKey(KEY)).text, LOG.text);
  const checkpoint = await openCheckpoint(read("checkpoint.txt"), await parseVerifierKey(KEY), ORIGIN);
  assert.deepEqual([checkpoint.origin, checkpoint.size], [ORIGIN, 3n]);
  assert.equal(b64root(checkpoint.root), read("checkpoint.txt").split("\n")[2]);
  const result = await verifyCheckpoint(new TextEncoder().encode(read("checkpoint.txt")), { verifierKey: KEY });
  assert.deepEqual([result.valid, result.exit, result.size, result.cosigned_by], [true, 0, 3n, []]);
  assert.equal(result.root, Buffer.from(checkpoint.root).toString("hex"));
  const other = await verifyCheckpoint(read("checkpoint.txt"), { verifierKey: read("other-key.txt") });
  assert.equal(other.check, "unknown-key");
});

test("checkpoint notes: each refusal by its name", async () => {
  const key = await parseVerifierKey(LOG.text);
  const check = (text, origin = null, k = key) => fails(openCheckpoint(text, k, origin));
  const root = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  const good = note(body(3, root), LOG);
  assert.equal(await check(good, ORIGIN), "ok");
  assert.equal(await check(good, "elsewhere"), "origin-mismatch");
  assert.equal(await check(good, null, await parseVerifierKey(OTHER.text)), "unknown-key");
  assert.equal(await check(note(body(3, root), OTHER)), "unknown-key");
  assert.equal(await check(note(body(3, root), OTHER, LOG)), "ok"); // a key rotation: two lines
  assert.equal(await check(good.replace("\n3\n", "\n4\n")), "signature-invalid");
  assert.equal(await check(good + signature(body(3, root), signer(99, "someone-else", 1))), "ok");
  assert.equal(await check(note(body(3, root, "example.com/other"), LOG)), "origin-mismatch");
  const renamed = signer(1, "example.com/other", 0x01);
  assert.equal(await check(note(body(3, root, "example.com/other"), renamed), null, await parseVerifierKey(renamed.text)), "ok");
  assert.equal(await check(note(`${body(3, root)}solvent: yes\n`, LOG)), "format"); // an extension line
  const padded = b64root(root).replace("8=", "9="); // the pad bit of the last character set
  assert.equal(await check(note(`${ORIGIN}\n3\n${padded}\n`, LOG)), "format");
  const [head, sig] = [good.slice(0, good.lastIndexOf(" ")), good.slice(good.lastIndexOf(" ") + 1, -1)];
  assert.equal(await check(`${head} ${sig.slice(0, -2)}9=\n`), "format"); // pad bits in a signature
  const short = Buffer.concat([LOG.id, Buffer.alloc(10)]).toString("base64");
  assert.equal(await check(`${good}\u2014 ${ORIGIN} ${short}\n`), "signature-invalid"); // by the key: 68 bytes
  const malformed = [
    good.replace("\n\n", "\n"), good.replace("\u2014", "-"), good.slice(0, -1), `${body(3, root)}\n`,
    good.replace("\n3\n", "\r\n3\n"), good.replace(ORIGIN, `${ORIGIN}\t`), good + "\u2014 x AAAA\n",
    good + "\u2014 a+b AAAAAAAA\n", good + "\u2014 x AAAAAA==\n" /* 4 bytes */, good + "\u2014 x  AAAAAAAA\n", good + "\u2014 x\u3000y AAAAAAAA\n",
    good + signature(body(3, root), signer(99, "x", 1)).repeat(100), `${"x".repeat(1 << 16)}\n${good}`,
  ];
  for (const text of malformed) assert.equal(await check(text), "format", JSON.stringify(text.slice(-40)));
  const A43 = "A".repeat(43);
  for (const bad of ["origin\n3\n", "\n3\nAAAA\n", `origin\n03\n${A43}=\n`, `origin\n-3\n${A43}=\n`,
    "origin\n3\nAAAA\n", `origin\n3\n${A43}=\n\n`, `origin\n3\n${A43}=`, `o\n18446744073709551616\n${A43}=\n`]) {
    assert.throws(() => parseCheckpoint(bad), { name: "FormatError" }, JSON.stringify(bad));
  }
  assert.equal(parseCheckpoint(`o\n18446744073709551615\n${A43}=\n`).size, 2n ** 64n - 1n);
  for (const text of [
    "name+c74f20a3",
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+c74f20a3+AhpjZBwU8OEIR6DDFvOEqqIF+xWSaqr8sMTiLNbLXRNY",
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+c74f20a3+not base64",
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
  ]) {
    assert.equal(await fails(parseVerifierKey(text)), "format", text);
  }
});

test("cosignatures: the quorum, their times and their form", async () => {
  const cosigned = COSIGNED.checkpoint;
  const options = { verifierKey: KEY, witnessKeys: [WITNESSES], now: NOW };
  const result = await verifyCheckpoint(cosigned, options);
  assert.deepEqual(result.cosigned_by.map((c) => [c.name, c.timestamp]), [
    ["witness-a.example", 1790000003n],
    ["witness-b.example", 1790000004n],
  ]);
  assert.equal(result.cosigned_by[0].time, "2026-09-21T14:13:23Z");
  const check = async (text, more = {}) => (await verifyCheckpoint(text, { ...options, ...more })).check ?? "ok";
  assert.equal(await check(cosigned, { recordMs: 1790000001000n }), "ok");
  assert.equal(await check(cosigned, { recordMs: 1790000064000n }), "witness-time"); // before its record
  assert.equal(await check(cosigned, { now: 1789999943 }), "witness-time"); // after the clock
  assert.equal(await check(cosigned, { now: 1789999944 }), "ok");
  assert.equal(await check(read("checkpoint.txt")), "witness-quorum");
  assert.equal(await check(read("checkpoint.txt"), { quorum: 0 }), "ok");
  const cpBody = read("checkpoint.txt").split("\n\n")[0] + "\n";
  const logOnly = read("checkpoint.txt");
  assert.equal(await check(logOnly + cosignature(cpBody, WITNESS_A, 1790000050n), { quorum: 1 }), "ok");
  assert.equal(await check(logOnly + cosignature(cpBody, WITNESS_A, 1790000050n, 75), { quorum: 1 }), "witness-signature-invalid");
  assert.equal(await check(logOnly + cosignature(cpBody, WITNESS_A, 2n ** 63n), { quorum: 1 }), "witness-signature-invalid");
  assert.equal(await check(logOnly + cosignature(cpBody.replace("\n3\n", "\n2\n"), WITNESS_A, 1790000050n), { quorum: 1 }), "witness-signature-invalid");
  const stranger = signer(0x41, "witness-c.example", 0x04);
  assert.equal(await check(logOnly + cosignature(cpBody, stranger, 1790000050n, 20), { quorum: 1 }), "witness-quorum");
  const both = logOnly + cosignature(cpBody, WITNESS_A, 1790000050n) + cosignature(cpBody, WITNESS_A, 1790000051n);
  assert.equal(await check(both, { quorum: 1 }), "ok");
  assert.equal(await check(both), "witness-quorum"); // one witness twice counts once
});

test("consistency between two signed checkpoints, as the auditor's page checks it", async () => {
  const leaves = Array.from({ length: 7 }, (_, i) => leaf(i));
  const signed = (n) => note(body(n, mth(leaves.slice(0, n))), LOG);
  const proof = subproof(3, leaves, true);
  const hex = proof.map((h) => h.toString("hex"));
  const ok = await checkConsistency(signed(3), signed(7), `${hex.join("\n")}\n`, { verifierKey: KEY });
  assert.deepEqual(ok, { valid: true, exit: 0, old_size: 3n, new_size: 7n });
  assert.equal((await checkConsistency(signed(3), signed(7), proof, { verifierKey: KEY })).valid, true);
  assert.equal((await checkConsistency(signed(3), signed(7), hex.map((h) => h.toUpperCase()), { verifierKey: KEY })).valid, true);
  const check = async (...args) => (await checkConsistency(...args, { verifierKey: KEY })).check;
  assert.equal(await check(signed(7), signed(3), proof), "consistency-sizes");
  assert.equal(await check(signed(3), signed(7), proof.slice(1)), "consistency-proof-size");
  assert.equal(await check(signed(3), signed(7), [sha(proof[0]), ...proof.slice(1)]), "consistency-root-mismatch");
  assert.equal(await check(signed(3), signed(7), "zz"), "format");
  assert.equal(await check(signed(3), signed(7), ["00"]), "format");
  assert.equal(await check(signed(3), note(body(7, mth(leaves), "example.com/other"), LOG), proof), "origin-mismatch");
  assert.equal(await check(signed(3), note(body(7, mth(leaves)), OTHER), proof), "unknown-key");
});
