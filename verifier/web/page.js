// Helpers of the two pages (verify-page.js, dashboard-page.js): the keys pinned in
// the URL fragment, DOM nodes built with textContent only (never innerHTML), JSON
// evidence offered as a download. The fragment never reaches a server.

/** The prover's origin: the fragment's `prover`, else this page's own. */
export const proverUrl = () => new URL(fragmentOptions().prover ?? location.origin);

/** An element by id. */
export const $ = (id) => document.getElementById(id);

/**
 * The URL fragment `#key=K&witness=W&witness=W2&quorum=Q&since=N&prover=URL&assets=A,B`
 * as `{key, witnesses, quorum, since, prover, assets}` (null or [] when absent).
 * Values are percent-decoded; a `+` stays a `+` (keys hold them). `quorum` and
 * `since` are kept only when decimal: `quorum` a Number, `since` a BigInt; `prover`
 * only when an http(s) origin: the daemon serving /proof and /roots to a page hosted
 * elsewhere; `assets` as written (the dashboard checks it: inputs.js's loadAssets).
 */
export function fragmentOptions(hash = location.hash) {
  const out = { key: null, witnesses: [], quorum: null, since: null, prover: null, assets: null };
  for (const part of hash.replace(/^#/, "").split("&")) {
    const cut = part.indexOf("=");
    if (cut < 0) continue;
    let name, value;
    try {
      [name, value] = [decodeURIComponent(part.slice(0, cut)), decodeURIComponent(part.slice(cut + 1))];
    } catch {
      continue; // a malformed escape: as if absent
    }
    if (name === "key") out.key = value;
    else if (name === "witness" && value) out.witnesses.push(value);
    else if (name === "quorum" && /^\d{1,3}$/.test(value)) out.quorum = Number(value);
    else if (name === "since" && /^\d{1,19}$/.test(value)) out.since = BigInt(value);
    else if (name === "prover" && /^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/.test(value)) out.prover = value;
    else if (name === "assets") out.assets = value;
  }
  return out;
}

/** A new element: `props` are set as properties (className, hidden, ...), except
 * `data` (dataset entries); children are nodes or strings (text nodes). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "data") Object.assign(node.dataset, value);
    else node[name] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** Set a node's text only when it changes (no layout work otherwise). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** `value` as JSON, BigInt as decimal strings. */
export function toJson(value) {
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? String(v) : v), 2);
}

/** A link that downloads `doc` as the JSON file `name` (a Blob made on click). */
export function downloadLink(label, name, doc) {
  const link = el("a", { href: "#", textContent: label, download: name });
  link.addEventListener("click", () => {
    const url = URL.createObjectURL(new Blob([toJson(doc)], { type: "application/json" }));
    link.href = url;
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
  return link;
}

/** A definition list's rows from `[term, value]` pairs (null values skipped). */
export function definitions(list, rows) {
  list.replaceChildren(
    ...rows.filter(([, value]) => value !== null).flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]),
  );
}
