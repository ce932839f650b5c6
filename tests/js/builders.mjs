// What the tests of tests/js/ build, from the protocol text and node:crypto alone
// (nothing of verifier/web/): RFC 9162 trees from their recursive definitions, C2SP
// signed notes and cosignatures, signed reserve reports (§13.1), records of
// docs/PROTOCOL.md §4 with their asset maps (§4.4), and a custodian's log
// publishing the root stream's three kinds of frame (§11.2). Not a test file of its
// own (node --test skips it).

import { createHash, createPrivateKey, createPublicKey, sign } from "node:crypto";

export const ORIGIN = "example.com/solvency/test";

export const sha = (...parts) => createHash("sha256").update(Buffer.concat(parts)).digest();
const split = (n) => 2 ** Math.floor(Math.log2(n - 1));
const LOG_HASHES = { leaf: (d) => sha(Buffer.of(0), d), node: (l, r) => sha(Buffer.of(1), l, r), empty: sha() };
export const MAP_HASHES = { leaf: (e) => sha(Buffer.of(0x45), e), node: (l, r) => sha(Buffer.of(0x4d), l, r), empty: sha(Buffer.of(0x4d)) };

/** MTH over leaf hashes (RFC 9162 §2.1.1), with the node hash of `h`. */
export function mth(leaves, h = LOG_HASHES) {
  if (leaves.length === 0) return h.empty;
  if (leaves.length === 1) return leaves[0];
  const k = split(leaves.length);
  return h.node(mth(leaves.slice(0, k), h), mth(leaves.slice(k), h));
}

/** PATH(m, D[n]) (§2.1.3.1). */
export function path(m, leaves, h = LOG_HASHES) {
  if (leaves.length === 1) return [];
  const k = split(leaves.length);
  return m < k
    ? [...path(m, leaves.slice(0, k), h), mth(leaves.slice(k), h)]
    : [...path(m - k, leaves.slice(k), h), mth(leaves.slice(0, k), h)];
}

/** SUBPROOF(m, D[n], b) (§2.1.4.1). */
export function subproof(m, leaves, complete) {
  const n = leaves.length;
  if (m === n) return complete ? [] : [mth(leaves)];
  const k = split(n);
  return m <= k
    ? [...subproof(m, leaves.slice(0, k), complete), mth(leaves.slice(k))]
    : [...subproof(m - k, leaves.slice(k), false), mth(leaves.slice(0, k))];
}

/** An Ed25519 key of seed `first, first + 1, ...` named `name`, of algorithm `alg`. */
export function signer(first, name, alg) {
  const seed = Buffer.from(Array.from({ length: 32 }, (_, i) => (first + i) & 0xff));
  const der = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]);
  const key = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  const pub = createPublicKey(key).export({ format: "der", type: "spki" }).subarray(12);
  const id = sha(Buffer.from(`${name}\n`), Buffer.of(alg), pub).subarray(0, 4);
  const text = `${name}+${id.toString("hex")}+${Buffer.concat([Buffer.of(alg), pub]).toString("base64")}`;
  return { name, key, id, text };
}

export const LOG = signer(1, ORIGIN, 0x01); // tests/vectors' log key
export const signature = (body, s) => `\u2014 ${s.name} ${Buffer.concat([s.id, sign(null, Buffer.from(body), s.key)]).toString("base64")}\n`;
export const note = (body, ...signers) => `${body}\n${signers.map((s) => signature(body, s)).join("")}`;
export const b64root = (root) => Buffer.from(root).toString("base64");
export const body = (size, root, origin = ORIGIN) => `${origin}\n${size}\n${b64root(root)}\n`;

/** A cosignature/v1 line by witness `s` at `time` (BigInt) on `checkpointBody`. */
export function cosignature(checkpointBody, s, time, size = 76) {
  const message = Buffer.from(`cosignature/v1\ntime ${time}\n${checkpointBody}`);
  const stamp = Buffer.alloc(8);
  stamp.writeBigUInt64BE(time);
  const raw = Buffer.concat([s.id, stamp, sign(null, message, s.key)]).subarray(0, size);
  return `\u2014 ${s.name} ${raw.toString("base64")}\n`;
}

// records (§4)

export function u(value, size) {
  const out = Buffer.alloc(size);
  let v = BigInt(value);
  for (let i = size - 1; i >= 0; i--, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

const named = (name) => Buffer.concat([Buffer.of(name.length), Buffer.from(name, "ascii")]);
const T0 = 1_790_000_000_000n;

export const COLD = signer(129, "cold", 0x01); // a reserve source's key

/** The signed report (§13.1, note text) of `COLD` holding `amount` of `asset` as of `asOf`. */
export const report = (asset, amount, asOf, s = COLD) =>
  note(`solvency-reserve/v1\nsource ${s.name}\nasset ${asset}\namount ${amount}\nas-of ${asOf}\n`, s);

/** One asset's entry at `epoch` with one reserve source, `cold`, as the Python
 * tests' fakelog.asset; `status` overrides the one §4.3 derives; `report` (a
 * signed report's text) is bound by its key id and hash: the entry's last 32 bytes. */
export function entry(asset, epoch, { liabilities = 100n, reserves = 150n, stale = false, timestamp = T0 + BigInt(epoch) * 1000n, status = null, report = null } = {}) {
  const asOf = timestamp - (stale ? 120_000n : 500n);
  const derived = stale ? 2 : reserves >= liabilities ? 0 : 1;
  const binding = report === null ? [u(0, 4), Buffer.alloc(32)] : [COLD.id, sha(Buffer.from(report))];
  return Buffer.concat([
    named(asset), Buffer.of(8, 4), Buffer.alloc(32, epoch % 256), u(liabilities, 16), u(reserves, 16),
    Buffer.of(status ?? derived, 1), named("cold"), u(reserves, 16), u(asOf, 8), ...binding,
  ]);
}

/** A record's header and its entries (sorted by the caller), with the map root. */
export function record(epoch, entries, timestamp = T0 + BigInt(epoch) * 1000n) {
  const root = mth(entries.map(MAP_HASHES.leaf), MAP_HASHES);
  const header = Buffer.concat([
    Buffer.from("SOLV"), Buffer.of(2), u(epoch, 8), u(timestamp, 8), u(60_000, 8), u(entries.length, 2), root,
  ]);
  return { header, entries, bytes: Buffer.concat([header, ...entries]) };
}

/** A record of the assets `names` (sorted here), each as `entry` with `options[name]`. */
export function many(epoch, names, options = {}) {
  const timestamp = T0 + BigInt(epoch) * 1000n;
  return record(epoch, [...names].sort().map((n) => entry(n, epoch, { timestamp, ...options[n] })), timestamp);
}

const hex = (hashes) => hashes.map((h) => h.toString("hex"));

/** A custodian's log of epochs, signed by `s`, and the frames it publishes. */
export class Log {
  constructor(s = LOG, origin = ORIGIN) {
    Object.assign(this, { s, origin, leaves: [], records: [], reports: [] });
  }

  checkpoint(size) {
    return note(body(size, mth(this.leaves.slice(0, size)), this.origin), this.s);
  }

  /** Log `rec` (`record`, `many`; default one asset, BTC), its full frame to carry
   * the signed `reports` (texts), and return that frame. */
  append(rec = many(this.leaves.length, ["BTC"]), reports = []) {
    this.leaves.push(LOG_HASHES.leaf(rec.header));
    this.records.push(rec);
    this.reports.push(reports);
    return this.frame(this.leaves.length - 1);
  }

  /** The parts every frame of `epoch` shares (for a log of epoch + 1 leaves); no
   * consistency proof: the inclusion path of the last leaf is one (§11.2). */
  common(epoch) {
    const leaves = this.leaves.slice(0, epoch + 1);
    return { checkpoint: this.checkpoint(epoch + 1), inclusion: hex(path(epoch, leaves)), reports: this.reports[epoch] };
  }

  frame(epoch) {
    return { type: "epoch", record: this.records[epoch].bytes.toString("base64"), ...this.common(epoch) };
  }

  /** Epoch `epoch`'s frame for a subscriber of `chosen`: each one's entry, or
   * the entries on either side of where it would sort. */
  assetsFrame(epoch, chosen) {
    const { header, entries } = this.records[epoch];
    const ids = entries.map((e) => e.subarray(1, 1 + e[0]).toString("ascii"));
    const indices = new Set();
    for (const c of chosen) {
      const at = ids.findIndex((id) => id >= c);
      const i = at === -1 ? ids.length : at; // where c sorts
      if (ids[i] === c) indices.add(i);
      else {
        if (i > 0) indices.add(i - 1);
        if (i < ids.length) indices.add(i);
      }
    }
    const leaves = entries.map(MAP_HASHES.leaf);
    const sent = [...indices].sort((a, b) => a - b).map((i) => ({
      entry: entries[i].toString("base64"),
      index: i,
      map_path: hex(path(i, leaves, MAP_HASHES)),
    }));
    const bound = new Set(entries.filter((_, i) => chosen.includes(ids[i])).map((e) => e.subarray(-32).toString("hex")));
    const { checkpoint, inclusion, reports } = this.common(epoch);
    const theirs = reports.filter((r) => bound.has(sha(Buffer.from(r)).toString("hex"))); // the chosen assets' reports
    return { type: "epoch-assets", header: header.toString("base64"), entries: sent, checkpoint, inclusion, reports: theirs };
  }

  checkpointFrame(epoch) {
    const consistency = epoch === 0 ? [] : hex(subproof(epoch, this.leaves.slice(0, epoch + 1), true));
    return { type: "checkpoint", checkpoint: this.checkpoint(epoch + 1), consistency };
  }
}
