// The epoch record in canonical bytes (docs/PROTOCOL.md §4; verifier/record.py).
//
//   record = header | asset* (asset_count entries, sorted by id, unique)
//   header = magic "SOLV" | version u8 = 2 | epoch u64 | timestamp_ms u64
//            | max_reserve_age_ms u64 | asset_count u16 | asset_map_root[32]
//   asset  = id_len u8 | id | decimals u8 | height u8 | root[32]
//            | liabilities u128 | reserves u128 | status u8
//            | source_count u8 | source* (sorted by name, unique)
//   source = name_len u8 | name | amount u128 | as_of_ms u64
//            | key_id u32 | report_hash[32]   (0 and 32 zero bytes: unattested)
//
// The log commits to the header, the header to the entries by the asset map
// (assetmap.js), so one entry is read with its header (`decodeEntry`). Decoders
// refuse (FormatError) whatever does not round-trip: trailing bytes, version 1 or
// another, an unknown status, unsorted or repeated assets or sources, liabilities
// above subtreeCap(height), reserves other than the sum of the sources, a source
// amount above 2^96 - 1 or dated after the epoch, a key id without a report hash,
// a status other than the one §4.3 derives, a full record whose entries' map root
// is not its header's. Integers of 64 bits and more are BigInt; results are frozen.

import { mapRoot } from "./assetmap.js";
import { FormatError, VerificationError } from "./errors.js";
import { checkAssetId, MAX_HEIGHT, subtreeCap } from "./hashing.js";
import { equal, readBigEndian } from "./fields.js";
import { leafHash, verifyInclusion } from "./rfc9162.js";

export const VERSION = 2;
export const MAX_RESERVE = (1n << 96n) - 1n;
export const STATUSES = ["SOLVENT", "INSOLVENT", "UNPROVEN"];
const MAX_DECIMALS = 36;
const SOURCE_NAME = /^[!-~]{1,64}$/; // printable ASCII, no space

/** A source is stale when `timestamp_ms - as_of_ms > max_reserve_age_ms` (§4.2). */
export function isStale(source, timestampMs, maxAgeMs) {
  return timestampMs - source.asOfMs > maxAgeMs;
}

/** The status an honest prover states for an asset (§4.3). */
export function expectedStatus(liabilities, sources, timestampMs, maxAgeMs) {
  if (sources.some((s) => isStale(s, timestampMs, maxAgeMs))) return "UNPROVEN";
  return sources.reduce((n, s) => n + s.amount, 0n) >= liabilities ? "SOLVENT" : "INSOLVENT";
}

class Cursor {
  constructor(bytes, what = "epoch record") {
    this.bytes = bytes;
    this.pos = 0;
    this.what = what;
  }

  take(n) {
    if (this.pos + n > this.bytes.length) throw new FormatError(`${this.what} is truncated`);
    this.pos += n;
    return this.bytes.subarray(this.pos - n, this.pos);
  }

  uint(n) {
    return readBigEndian(this.take(n));
  }

  byte() {
    return this.take(1)[0];
  }

  name(what) {
    const raw = this.take(this.byte());
    if (raw.some((b) => b > 0x7f)) throw new FormatError(`${what} is not ASCII`);
    return String.fromCharCode(...raw);
  }

  finish() {
    const left = this.bytes.length - this.pos;
    if (left) throw new FormatError(`${left} trailing bytes after ${this.what}`);
  }
}

function strictlySorted(names) {
  return names.every((name, i) => i === 0 || names[i - 1] < name);
}

function readSource(cursor) {
  const name = cursor.name("reserve source name");
  const source = {
    name,
    amount: cursor.uint(16),
    asOfMs: cursor.uint(8),
    keyId: Number(cursor.uint(4)),
    reportHash: cursor.take(32).slice(),
  };
  if (!SOURCE_NAME.test(name)) {
    throw new FormatError(`invalid reserve source name ${JSON.stringify(name)}: want 1-64 printable ASCII`);
  }
  if (source.amount > MAX_RESERVE) {
    throw new FormatError(`reserve ${name}: amount ${source.amount} outside 0..2**96-1`);
  }
  source.attested = source.reportHash.some((b) => b !== 0);
  if (!source.attested && source.keyId !== 0) {
    throw new FormatError(`reserve ${name}: unattested, but names key id ${source.keyId}`);
  }
  return Object.freeze(source);
}

function readAsset(cursor) {
  const asset = cursor.name("asset id");
  const decimals = cursor.byte();
  const height = cursor.byte();
  const root = cursor.take(32).slice();
  const liabilities = cursor.uint(16);
  const reserves = cursor.uint(16);
  const status = cursor.byte();
  const sources = Array.from({ length: cursor.byte() }, () => readSource(cursor));
  if (status >= STATUSES.length) throw new FormatError(`${asset}: unknown status ${status}`);
  checkAssetId(asset);
  if (decimals > MAX_DECIMALS) {
    throw new FormatError(`${asset}: decimals ${decimals} outside 0..${MAX_DECIMALS}`);
  }
  if (height > MAX_HEIGHT) throw new FormatError(`${asset}: height ${height} outside 0..${MAX_HEIGHT}`);
  if (liabilities > subtreeCap(height)) {
    throw new FormatError(
      `${asset}: liabilities ${liabilities} exceed what a tree of height ${height} can hold`,
    );
  }
  if (!strictlySorted(sources.map((s) => s.name))) {
    throw new FormatError(`${asset}: reserve sources must be sorted and unique`);
  }
  if (reserves !== sources.reduce((n, s) => n + s.amount, 0n)) {
    throw new FormatError(`${asset}: reserves total is not the sum of its sources`);
  }
  return {
    asset,
    decimals,
    height,
    root,
    liabilities,
    reserves,
    status: STATUSES[status],
    sources: Object.freeze(sources),
  };
}

function readHeader(cursor) {
  const start = cursor.pos;
  const magic = cursor.take(4);
  const version = cursor.byte();
  const header = {
    version,
    epoch: cursor.uint(8),
    timestampMs: cursor.uint(8),
    maxReserveAgeMs: cursor.uint(8),
    assetCount: Number(cursor.uint(2)),
    assetMapRoot: cursor.take(32).slice(),
  };
  if (String.fromCharCode(...magic) !== "SOLV") throw new FormatError("not an epoch record (bad magic)");
  if (version === 1) {
    throw new FormatError(
      "epoch record version 1 (unreleased, without reserve attestations) is no longer read: " +
        "this verifier reads version 2",
    );
  }
  if (version !== VERSION) throw new FormatError(`unsupported epoch record version ${version}`);
  header.bytes = cursor.bytes.slice(start, cursor.pos);
  return Object.freeze(header);
}

/** What an entry must agree on with its header: no source dated after the epoch,
 * and the status the epoch's time and policy derive. */
function checkAsset(header, a) {
  for (const s of a.sources) {
    if (s.asOfMs > header.timestampMs) throw new FormatError(`${a.asset}: reserve ${s.name} is dated after the epoch`);
  }
  const want = expectedStatus(a.liabilities, a.sources, header.timestampMs, header.maxReserveAgeMs);
  if (a.status !== want) throw new FormatError(`${a.asset}: status ${a.status} contradicts ${want}`);
  return Object.freeze(a);
}

/** Decode a record header (exactly HEADER_SIZE bytes) into `{version, epoch,
 * timestampMs, maxReserveAgeMs, assetCount, assetMapRoot, bytes}`. */
export function decodeHeader(bytes) {
  const cursor = new Cursor(bytes);
  const header = readHeader(cursor);
  cursor.finish();
  return header;
}

/** Decode one asset entry of the record `header` heads (module comment). */
export function decodeEntry(bytes, header) {
  const cursor = new Cursor(bytes, "asset entry");
  const asset = readAsset(cursor);
  cursor.finish();
  return checkAsset(header, asset);
}

/**
 * Decode a full record (its header, then every entry) into `{header, epoch,
 * timestampMs, maxReserveAgeMs, assetCount, entries (bytes), assets: [{asset,
 * decimals, height, root, liabilities, reserves, status, sources: [{name, amount,
 * asOfMs, keyId, reportHash, attested}]}], solvent}` (status: "SOLVENT",
 * "INSOLVENT" or "UNPROVEN"; solvent: every asset SOLVENT). Throws FormatError as
 * the module comment says, and if the entries' map root is not the header's.
 */
export async function decodeRecord(bytes) {
  const cursor = new Cursor(bytes);
  const header = readHeader(cursor);
  const entries = [];
  const assets = [];
  for (let i = 0; i < header.assetCount; i++) {
    const start = cursor.pos;
    assets.push(readAsset(cursor));
    entries.push(bytes.slice(start, cursor.pos));
  }
  cursor.finish();
  if (!strictlySorted(assets.map((a) => a.asset))) {
    throw new FormatError("record assets must be sorted by id and unique");
  }
  assets.forEach((a) => checkAsset(header, a));
  if (!equal(await mapRoot(entries), header.assetMapRoot)) {
    throw new FormatError("the record's asset map root is not that of its entries");
  }
  return recordView(header, assets, { entries: Object.freeze(entries) });
}

/** A record's (or a part of one's) fields for its readers: the header's
 * epoch, times and asset count, `assets`, `solvent` (every one of them
 * SOLVENT), and `extra`. */
export function recordView(header, assets, extra) {
  const { epoch, timestampMs, maxReserveAgeMs, assetCount } = header;
  return Object.freeze({
    header,
    epoch,
    timestampMs,
    maxReserveAgeMs,
    assetCount,
    ...extra,
    assets: Object.freeze(assets),
    solvent: assets.every((a) => a.status === "SOLVENT"),
  });
}

/** Decode a record `header` (bytes) and check it is leaf `epoch` of the
 * checkpoint's log (§7 step 2): VerificationError `record-not-in-log` or an RFC
 * 9162 inclusion check. */
export async function headerInLog(bytes, inclusion, checkpoint) {
  const header = decodeHeader(bytes);
  if (header.epoch >= checkpoint.size) {
    throw new VerificationError(
      "record-not-in-log",
      `epoch ${header.epoch} is not in a log of ${checkpoint.size} records`,
    );
  }
  await verifyInclusion(await leafHash(bytes), header.epoch, checkpoint.size, inclusion, checkpoint.root);
  return header;
}
