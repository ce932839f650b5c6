// Root stream frames (docs/PROTOCOL.md §11.2) and the auditor's rules on them
// (audit.js), for each subscription: every asset, chosen assets (proven present or
// absent through the asset map, §4.4), checkpoints only; frames built by
// builders.mjs's log, as tests/verifier/test_audit.py builds them with fakelog.py.

import assert from "node:assert/strict";
import { test } from "node:test";

import { cosignature, entry, Log, many, record, report, sha, signer } from "./builders.mjs";
import {
  ALL_ASSETS,
  boundReports,
  checkEpoch,
  loadAssets,
  parseMessage,
  parseVerifierKey,
  parseWitnessKey,
  subscriptionQuery,
} from "../../verifier/web/solvency.js";

const KEY = await parseVerifierKey(new Log().s.text);
const ASSETS = ["ADA", "BTC", "DOGE", "ETH", "SOL"];
const chose = (...assets) => ({ assets, checkpoints: false });
const CHECKPOINTS = { assets: null, checkpoints: true };

/** Verify `frames` (objects or texts) in order; the last audit, or the check that failed. */
async function audit(frames, subscription = ALL_ASSETS, options = {}) {
  let state = null;
  let last = null;
  try {
    for (const frame of frames) {
      const text = typeof frame === "string" ? frame : JSON.stringify(frame);
      last = await checkEpoch(state, parseMessage(text), KEY, { subscription, ...options });
      state = last.state;
    }
  } catch (error) {
    if (error.check) return error.check;
    if (error.name === "FormatError") return "format";
    throw error;
  }
  return last;
}

const found = (a) => a.findings.map((f) => `${f.asset} ${f.status}: ${f.detail}`);

function fiveAssetLog(epochs = 3, options = {}) {
  const log = new Log();
  for (let e = 0; e < epochs; e++) log.append(many(e, ASSETS, options[e] ?? {}));
  return log;
}

test("frames of the three kinds are read strictly", () => {
  const log = fiveAssetLog(2);
  const kinds = [log.frame(1), log.assetsFrame(1, ["BTC", "CAT"]), log.checkpointFrame(1)];
  const [full, some, bare] = kinds.map((f) => parseMessage(JSON.stringify(f)));
  assert.deepEqual([full.type, some.type, bare.type], ["epoch", "epoch-assets", "checkpoint"]);
  assert.equal(full.record.length, 63 + 4 * 137 + 138); // DOGE's id is one letter longer
  assert.deepEqual(some.entries.map((e) => e.index), [1n, 2n]);
  assert.equal(some.header.length, 63);
  assert.deepEqual(Object.keys(bare).sort(), ["checkpoint", "consistency", "type"]);
  assert.deepEqual(Object.keys(full).sort(), ["checkpoint", "inclusion", "record", "reports", "type"]);
  assert.deepEqual(Object.keys(some).sort(), ["checkpoint", "entries", "header", "inclusion", "reports", "type"]);
  const report = "solvency-reserve/v1\nsource hot\n";
  assert.equal(parseMessage(JSON.stringify({ ...kinds[0], reports: [report] })).reports.length, 1);
  const text = JSON.stringify(kinds[0]);
  const [e0, e1] = kinds[1].entries;
  const malformed = [
    text.replace('"type":"epoch",', '"type":"epoch","type":"epoch",'),
    "\ufeff" + text,
    `{"type": "epoch", "record": "${"A".repeat(1 << 20)}"}`,
    ...[{ ...kinds[0], type: "other" }, { ...kinds[0], extra: 1 }, { ...kinds[0], reports: [report, report] }],
    ...[{ ...kinds[0], reports: "none" }, { ...kinds[0], record: kinds[0].record.slice(0, -4) + "AAB=" }],
    // a consistency proof beside the inclusion path: no longer part of these frames
    ...[{ ...kinds[0], consistency: [] }, { ...kinds[1], consistency: [] }, { ...kinds[2], consistency: undefined }],
    ...[{ ...kinds[1], record: kinds[0].record }, { ...kinds[1], entries: [e1, e0] }, { ...kinds[1], entries: [e0, e0] }],
    ...[{ ...kinds[1], entries: {} }, { ...kinds[1], entries: [{ ...e0, path: [] }] }, { ...kinds[1], entries: [{ ...e0, index: -1 }] }],
    ...[{ ...kinds[1], entries: [{ ...e0, index: "1" }] }, { ...kinds[1], entries: [{ ...e0, map_path: ["00"] }] }],
    ...[{ ...kinds[1], header: undefined }, { ...kinds[2], inclusion: [] }, { ...kinds[2], reports: [] }, { type: "checkpoint" }],
  ];
  for (const bad of malformed) {
    const data = typeof bad === "string" ? bad : JSON.stringify(bad);
    assert.throws(() => parseMessage(data), { name: "FormatError" }, data.slice(0, 80));
  }
});

test("every asset: the chain of custody, and the record's findings", async () => {
  const log = fiveAssetLog(4, { 2: { ETH: { liabilities: 200n } }, 3: { SOL: { stale: true } } });
  const frames = log.records.map((_, e) => log.frame(e));
  const last = await audit(frames);
  assert.equal(last.epoch, 3n);
  assert.equal(last.state.size, 4n);
  assert.equal(last.record.assetCount, 5);
  assert.deepEqual(found(last), ["SOL unproven: stale reserve sources: cold"]);
  assert.deepEqual(found(await audit(frames.slice(0, 3))), ["ETH insolvent: reserves 150 < liabilities 200"]);
  assert.equal(await audit([frames[0], frames[2]]), "epoch-gap");
  assert.equal(await audit([frames[0], frames[1], frames[1]]), "replayed-checkpoint");
  // the frames of chosen assets, or of checkpoints, where every asset was asked for
  assert.equal(await audit([frames[0], log.assetsFrame(1, ["BTC"])]), "format");
  assert.equal(await audit([frames[0], log.checkpointFrame(1)]), "format");
  // a record whose map root is not its header's: the header alone is signed
  const signed = many(0, ASSETS);
  const others = many(0, ASSETS, { BTC: { liabilities: 99n } }).entries;
  const swapped = { ...signed, bytes: Buffer.concat([signed.header, ...others]) };
  assert.equal(await audit([new Log().append(swapped)]), "format");
  const other = new Log(signer(33, "other.example/log", 1), "other.example/log");
  assert.equal(await audit([other.append()]), "unknown-key");
});

test("a log that does not extend the last verified one is a fork, by the inclusion path alone", async () => {
  const log = fiveAssetLog(6);
  const frames = log.records.map((_, e) => log.frame(e));
  const chosen = log.records.map((_, e) => log.assetsFrame(e, ["BTC", "CAT"]));
  // the same key signs a log whose first n leaves differ from the one verified
  for (const [n, at] of [[1, 0], [2, 1], [4, 0], [4, 3], [5, 2]]) {
    const twin = fiveAssetLog(6, { [at]: { ETH: { liabilities: 7n } } });
    const what = `a log of ${n} then one whose leaf ${at} differs`;
    assert.equal((await audit(frames.slice(0, n + 1))).epoch, BigInt(n), what);
    assert.equal(await audit([...frames.slice(0, n), twin.frame(n)]), "fork", what);
    assert.equal(await audit([...chosen.slice(0, n), twin.assetsFrame(n, ["BTC", "CAT"])], chose("BTC", "CAT")), "fork", what);
    const bare = [...log.records.slice(0, n).map((_, e) => log.checkpointFrame(e)), twin.checkpointFrame(n)];
    assert.equal(await audit(bare, CHECKPOINTS), "fork", what);
  }
  // the fork is named with the size whose root differs; the checks before it come first
  const twin = fiveAssetLog(6, { 0: { BTC: { reserves: 1n } } });
  const state = (await audit(frames.slice(0, 3))).state;
  const fork = await checkEpoch(state, parseMessage(JSON.stringify(twin.frame(3))), KEY).catch((e) => e);
  assert.deepEqual([fork.check, fork.detail], ["fork", "its first 3 records are not the log last verified"]);
  assert.equal(await audit([...frames.slice(0, 3), twin.frame(4)]), "epoch-gap");
  assert.equal(await audit([...frames.slice(0, 3), twin.frame(2)]), "fork"); // same size, other root
  const bent = structuredClone(twin.frame(3));
  bent.inclusion[1] = frames[3].inclusion[1]; // the verified log's leaves 0-1: not this log's path
  assert.equal(await audit([...frames.slice(0, 3), bent]), "inclusion-root-mismatch");
});

test("reserve reports: each record's kept across frames that carry only the new ones", async () => {
  const T = (e) => 1_790_000_000_000n + BigInt(e) * 1000n - 500n;
  const btc = [0, 1, 2].map((e) => report("BTC", 150n, T(e)));
  const eth = [0, 1, 2].map((e) => report("ETH", 150n, T(e)));
  const hash = (r) => sha(Buffer.from(r)).toString("hex");
  const log = new Log();
  // epoch 0 binds btc[0] and eth[0]; 1: btc[0] again, eth[1]; 2: btc[1], ETH unattested;
  // 3: btc[1] again, eth[1] again (dropped by epoch 2, not sent again: not held)
  const binds = [[btc[0], eth[0]], [btc[0], eth[1]], [btc[1], null], [btc[1], eth[1]]];
  const sent = [[btc[0], eth[0]], [eth[1]], [btc[1], report("SOL", 1n, T(2))], []]; // an extra report is ignored
  binds.forEach(([b, e], epoch) => log.append(many(epoch, ["BTC", "ETH"], { BTC: { report: b }, ETH: { report: e } }), sent[epoch]));
  let state = null;
  let held = new Map();
  const kept = [];
  for (let e = 0; e < 4; e++) {
    const message = parseMessage(JSON.stringify(log.frame(e)));
    const audit = await checkEpoch(state, message, KEY);
    [state, held] = [audit.state, await boundReports(held, audit.record, message.reports)];
    kept.push([...held.keys()]);
    assert.ok([...held].every(([h, r]) => hash(r) === h));
  }
  assert.deepEqual(kept, [[hash(btc[0]), hash(eth[0])], [hash(btc[0]), hash(eth[1])], [hash(btc[1])], [hash(btc[1])]]);
  // a connection's first frame carries them all: resuming at epoch 3
  const resumed = { ...log.frame(3), reports: [btc[1], eth[1]] };
  assert.deepEqual([...(await boundReports(new Map(), (await audit([resumed])).record, parseMessage(JSON.stringify(resumed)).reports)).keys()], [hash(btc[1]), hash(eth[1])]);
  // chosen assets: only theirs are sent and kept; a checkpoint frame keeps what was held
  const some = parseMessage(JSON.stringify(log.assetsFrame(1, ["ETH"])));
  assert.deepEqual(some.reports.map((r) => hash(r)), [hash(eth[1])]);
  const partial = (await audit([log.assetsFrame(0, ["ETH"]), log.assetsFrame(1, ["ETH"])], chose("ETH"))).record;
  assert.deepEqual([...(await boundReports(new Map([[hash(eth[0]), eth[0]]]), partial, some.reports)).keys()], [hash(eth[1])]);
  assert.equal(await boundReports(held, null, undefined), held);
});

test("chosen assets: present, absent, and each way the entries can fail to prove it", async () => {
  const log = fiveAssetLog(3, { 2: { BTC: { liabilities: 151n } } });
  const choice = ["BTC", "CAT", "ZZZ"];
  const frames = [0, 1, 2].map((e) => log.assetsFrame(e, choice));
  const last = await audit(frames, chose(...choice));
  assert.equal(last.epoch, 2n);
  assert.deepEqual(last.record.assets.map((a) => a.asset), ["BTC"]);
  assert.deepEqual(last.record.absent, ["CAT", "ZZZ"]);
  assert.equal(last.record.assetCount, 5);
  assert.deepEqual(found(last), [
    "BTC insolvent: reserves 150 < liabilities 151",
    "CAT absent: the record has no entry for it",
    "ZZZ absent: the record has no entry for it",
  ]);
  assert.deepEqual(frames[2].entries.map((e) => e.index), [1, 2, 4]); // BTC, DOGE after CAT, SOL the last
  assert.deepEqual(found(await audit([log.assetsFrame(0, ["AAA", "ADA"])], chose("AAA", "ADA"))), ["AAA absent: the record has no entry for it"]);
  // a full frame where chosen assets were asked for: CAT's absence would go unseen
  assert.equal(await audit([log.frame(0)], chose("CAT")), "format");

  const change = (f, edit) => {
    const copy = structuredClone(f);
    edit(copy, copy.entries);
    return copy;
  };
  const f = frames[0];
  const lies = fiveAssetLog(1, { 0: { ETH: { liabilities: 99n } } });
  const at = (i) => (copy, entries) => { entries.splice(i, 1); };
  const cases = {
    "the entry after CAT dropped": [change(f, at(1)), "asset-map-incomplete"],
    "the last entry dropped": [change(f, at(2)), "asset-map-incomplete"],
    "every entry dropped": [change(f, (c) => { c.entries = []; }), "asset-map-incomplete"],
    "BTC dropped: CAT looks absent, BTC neither": [change(f, at(0)), "asset-map-incomplete"],
    "an index moved": [change(f, (c, e) => { e[0].index = 0; }), "asset-map-mismatch"],
    "an index beyond the map": [change(f, (c, e) => { e[2].index = 5; }), "asset-map-mismatch"],
    "a huge index": [change(f, (c, e) => { e[2].index = "HUGE"; }), "asset-map-mismatch"],
    "a map path hash flipped": [change(f, (c, e) => { e[0].map_path[1] = "00".repeat(32); }), "asset-map-mismatch"],
    "a map path shortened": [change(f, (c, e) => { e[0].map_path.pop(); }), "asset-map-mismatch"],
    "a map path lengthened": [change(f, (c, e) => { e[0].map_path.push("11".repeat(32)); }), "asset-map-mismatch"],
    "two entries' bytes swapped": [change(f, (c, e) => { [e[0].entry, e[1].entry] = [e[1].entry, e[0].entry]; }), "asset-map-mismatch"],
    "an entry of another epoch": [change(f, (c, e) => { e[0].entry = log.assetsFrame(1, choice).entries[0].entry; }), "asset-map-mismatch"],
    "the header of another epoch": [change(f, (c) => { c.header = log.assetsFrame(1, choice).header; }), "record-not-in-log"],
    "another header of this epoch": [change(f, (c) => { c.header = lies.assetsFrame(0, choice).header; }), "inclusion-root-mismatch"],
  };
  for (const [what, [frame, expect]] of Object.entries(cases)) {
    const text = JSON.stringify(frame).replace('"HUGE"', "18446744073709551616");
    assert.equal(await audit([text], chose(...choice)), expect, what);
  }
  // neighbours that do not touch: ETH's entry proves nothing of CAT
  const far = change(log.assetsFrame(0, ["BTC", "ETH"]), () => {});
  assert.equal(await audit([far], chose("CAT")), "asset-map-incomplete");
  // a record of no assets proves every asset absent
  const empty = new Log();
  empty.append(record(0, []));
  assert.deepEqual((await audit([empty.assetsFrame(0, ["BTC"])], chose("BTC"))).record.absent, ["BTC"]);
  // an entry the map proves, but malformed (a status §4.3 does not derive), signed by the custodian
  const bad = new Log();
  bad.append(record(0, [entry("BTC", 0, { status: 1 })]));
  assert.equal(await audit([bad.assetsFrame(0, ["BTC"])], chose("BTC")), "format");
  assert.equal(await audit([bad.frame(0)]), "format");
  // frames of another kind than chosen assets
  assert.equal(await audit([log.checkpointFrame(0)], chose("BTC")), "format");
});

test("checkpoints only: the chain of custody without records", async () => {
  const log = fiveAssetLog(4);
  const frames = [0, 1, 2, 3].map((e) => log.checkpointFrame(e));
  const last = await audit(frames, CHECKPOINTS);
  assert.deepEqual([last.epoch, last.record, last.findings.length, last.state.timestampMs], [3n, null, 0, 0n]);
  assert.equal(await audit([frames[0], frames[2]], CHECKPOINTS), "epoch-gap");
  assert.equal(await audit([frames[0], frames[1], frames[0]], CHECKPOINTS), "replayed-checkpoint");
  const fork = new Log();
  for (let e = 0; e < 2; e++) fork.append(many(e, ["BTC"]));
  assert.equal(await audit([frames[0], fork.checkpointFrame(1)], CHECKPOINTS), "fork");
  assert.equal(await audit([log.frame(0)], CHECKPOINTS), "format");
  assert.equal(await audit([log.assetsFrame(0, ["BTC"])], CHECKPOINTS), "format");
  // a state kept from a record goes on with its time
  const state = (await audit([log.frame(0)])).state;
  const next = await checkEpoch(state, parseMessage(JSON.stringify(frames[1])), KEY, { subscription: CHECKPOINTS });
  assert.equal(next.state.timestampMs, state.timestampMs);
  // cosignatures are checked without a record's time: only against the clock
  const witness = signer(0x41, "witness-a.example", 0x04);
  const wkey = await parseWitnessKey(witness.text);
  const cp = frames[0].checkpoint;
  const cpBody = cp.slice(0, cp.indexOf("\n\n") + 1);
  const old = { ...frames[0], checkpoint: cp + cosignature(cpBody, witness, 1_000n) };
  const options = { witnesses: [wkey], quorum: 1, now: 1_000 };
  assert.equal((await audit([old], CHECKPOINTS, options)).witnessFailure, null);
  assert.equal((await audit([old], CHECKPOINTS, { ...options, now: 2_000 })).witnessFailure, null);
  const future = { ...frames[0], checkpoint: cp + cosignature(cpBody, witness, 1_100n) };
  assert.equal((await audit([future], CHECKPOINTS, options)).witnessFailure.check, "witness-time");
  assert.equal((await audit([frames[0]], CHECKPOINTS, options)).witnessFailure.check, "witness-quorum");
});

test("what a subscription asks for", () => {
  assert.equal(subscriptionQuery(ALL_ASSETS), "");
  assert.equal(subscriptionQuery(CHECKPOINTS), "&only=checkpoints");
  assert.equal(subscriptionQuery(chose(...loadAssets("ETH,BTC"))), "&assets=BTC,ETH");
  for (const bad of ["", "btc", "BTC,BTC", "BTC,", "BTC ETH", Array.from({ length: 65 }, (_, i) => `A${i}`).join()]) {
    assert.throws(() => loadAssets(bad), { name: "UsageError" }, bad);
  }
  assert.equal(loadAssets(Array.from({ length: 64 }, (_, i) => `A${i}`).join()).length, 64);
});
