// What the caller names (verifier/inputs.py): the log's verifier key, the
// witnesses' keys and their quorum, the assets a root stream subscriber chooses.
// What cannot be used is a UsageError (the CLI's exit status 2).

import { FormatError, UsageError } from "./errors.js";
import { parseVerifierKey } from "./checkpoint.js";
import { parseWitnessKey } from "./cosignature.js";
import { checkAssetId } from "./hashing.js";

const LINES = /\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/; // Python's str.splitlines()
const MAX_CHOSEN = 64;

/** The log's verifier key text (`<name>+<key id>+<base64>`, surrounding white space
 * ignored), parsed; UsageError if it does not parse. */
export async function loadVerifierKey(text) {
  try {
    return await parseVerifierKey(text);
  } catch (error) {
    if (error instanceof FormatError) throw new UsageError(`verifierKey: ${error.message}`);
    throw error;
  }
}

/**
 * The witnesses and quorum of the options (verifier/inputs.py's load_witnesses):
 * `witnessKeys` is a list of texts, each a witness key or several, one per line
 * (a file's content); no two of one name. `quorum` is 0 .. their number, by
 * default all of them. UsageError otherwise.
 */
export async function loadWitnessKeys(witnessKeys = [], quorum = undefined) {
  if (typeof witnessKeys === "string" || !Array.isArray(witnessKeys)) {
    throw new UsageError("witnessKeys must be a list of key texts");
  }
  const keys = [];
  for (const value of witnessKeys) {
    const lines = String(value).split(LINES).filter((line) => line.trim());
    if (lines.length === 0) throw new UsageError(`witnessKeys: no key in ${JSON.stringify(value)}`);
    for (const line of lines) {
      let key;
      try {
        key = await parseWitnessKey(line);
      } catch (error) {
        if (error instanceof FormatError) throw new UsageError(`witnessKeys: ${error.message}`);
        throw error;
      }
      if (keys.some((k) => k.name === key.name)) {
        throw new UsageError(`witnessKeys: two keys of ${key.name}: a quorum counts witnesses`);
      }
      keys.push(key);
    }
  }
  const required = quorum ?? keys.length;
  if (!Number.isInteger(required) || required < 0 || required > keys.length) {
    throw new UsageError(`quorum ${String(quorum)}: give 0 to ${keys.length} (the witness keys)`);
  }
  return { witnesses: keys, quorum: required };
}

/** The chosen assets of `/roots?assets=A,B,…` (PROTOCOL §11.2) from their
 * comma-separated text, as the servers read it (verifier/relay_history.py's
 * parse_chosen): 1 to 64 asset ids, none twice; sorted here. */
export function loadAssets(text) {
  const ids = String(text).split(",");
  if (ids.length > MAX_CHOSEN) throw new UsageError(`assets must name 1 to ${MAX_CHOSEN} asset ids, not ${ids.length}`);
  for (const id of ids) {
    try {
      checkAssetId(id);
    } catch (error) {
      if (error instanceof FormatError) throw new UsageError(`assets: ${error.message}`);
      throw error;
    }
  }
  if (new Set(ids).size !== ids.length) throw new UsageError("assets names an asset twice");
  return Object.freeze(ids.sort());
}
