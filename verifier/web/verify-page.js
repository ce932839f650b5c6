// The customer's page (verify.html): verify a proof file, dropped or opened, or
// fetched from this server's /proof with the user's id and token, under the
// verifier key (and witnesses) pinned in the URL fragment or pasted, and show
// what `solvency-verify proof` prints. The token goes only to /proof, in the
// Authorization header; the file is read here and sent nowhere.

import { printableId, verifyProofFile } from "./solvency.js";
import { $, definitions, el, fragmentOptions, proverUrl } from "./page.js";

const QUORUM_WAIT_MS = 5000; // as verifier/fetch.py: a proof may race its cosigning
const FIRST_RETRY_MS = 250;

/** A refusal of /proof: its status and the JSON error body's code and message. */
class ServerError extends Error {
  constructor(status, body) {
    let detail = body.slice(0, 300);
    try {
      const doc = JSON.parse(body);
      if (doc?.type === "error") detail = `${doc.code}: ${doc.message}`;
    } catch {
      // not JSON: the text as it is
    }
    super(`the server answered ${status} ${detail}`);
  }
}

function loadFragment() {
  const pinned = fragmentOptions();
  if (pinned.key !== null) $("key").value = pinned.key;
  if (pinned.witnesses.length) {
    $("witnesses").value = pinned.witnesses.join("\n");
    $("witness-box").open = true;
  }
  if (pinned.quorum !== null) $("quorum").value = String(pinned.quorum);
}

function options(user) {
  const witnesses = $("witnesses").value;
  const quorum = $("quorum").value.trim();
  return {
    verifierKey: $("key").value,
    witnessKeys: witnesses.trim() ? [witnesses] : [],
    quorum: quorum === "" ? undefined : Number(quorum),
    user: user || undefined,
  };
}

function verdict(state, text, check = "") {
  const node = $("verdict");
  node.className = { valid: "valid", warning: "warning", busy: "" }[state] ?? "invalid";
  node.dataset.state = state;
  node.dataset.check = check;
  node.textContent = text;
  $("result").hidden = false;
}

function clearDetails() {
  $("facts").replaceChildren();
  $("assets").tBodies[0].replaceChildren();
  $("assets").hidden = true;
  $("solvency").textContent = "";
  $("solvency").className = "";
}

function cosigned(result, opts) {
  if (!opts.witnessKeys.length) return "not checked: no witness key given";
  const names = result.cosigned_by.map((c) => `${printableId(c.name)} at ${c.time}`);
  const required = opts.quorum ?? "every witness";
  return `${names.join(", ") || "nobody"} (a quorum of ${required} required)`;
}

function show(result, opts, from) {
  clearDetails();
  if (result.valid === null) return verdict("usage", `Cannot verify: ${result.reason}`, "usage");
  if (!result.valid) {
    definitions($("facts"), [["Proof", from]]);
    return verdict("invalid", `INVALID ${result.check}: ${printableId(result.reason)}`, result.check);
  }
  const solvent = result.exit === 0;
  verdict(solvent ? "valid" : "warning", `VALID: ${printableId(result.user)}'s balances are included in epoch ${result.epoch}`);
  definitions($("facts"), [
    ["User", printableId(result.user)],
    ["Epoch", String(result.epoch)],
    ["Time", result.time],
    ["Log", `${printableId(result.origin)}, ${result.log_size} epochs, signed by the verifier key`],
    ["Cosigned by", cosigned(result, opts)],
    ["Record", `${result.asset_count} asset(s); your proof holds the entries of yours`],
    ["Checked", "the log's signature, the record's place in the log, each of your assets' entry in it, your path to that asset's root and total"],
    ["Proof", from],
  ]);
  const rows = result.assets.map((a) =>
    el(
      "tr",
      {},
      el("td", {}, a.asset),
      el("td", {}, a.balance),
      el("td", {}, a.liabilities),
      el("td", {}, a.reserves),
      el("td", { className: `status-${a.status}` }, a.status),
    ),
  );
  $("assets").tBodies[0].replaceChildren(...rows);
  $("assets").hidden = false;
  const others = result.record.assets.filter((a) => a.status !== "SOLVENT");
  $("solvency").className = solvent ? "valid" : "warning";
  $("solvency").textContent = solvent
    ? "The custodian is solvent in each of your assets in this epoch (the record's other assets are not in your proof)."
    : `WARNING: not every asset is proven solvent: ${others.map((a) => `${a.asset} ${a.status.toLowerCase()}`).join(", ")}`;
}

async function verifyBytes(bytes, from, user) {
  const opts = options(user);
  if (!opts.verifierKey.trim()) return verdict("usage", "Give the custodian's verifier key first (step 1).", "usage");
  verdict("busy", "Verifying…");
  show(await verifyProofFile(bytes, opts), opts, from);
}

async function openFile(file) {
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  $("file").value = ""; // the same file again is a new check
  await verifyBytes(bytes, `the file ${printableId(file.name)}`, $("user").value);
}

async function fetchProof(user, token) {
  const response = await fetch(new URL(`/proof?user=${encodeURIComponent(user)}`, proverUrl()), {
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
    referrerPolicy: "no-referrer",
  });
  const body = new Uint8Array(await response.arrayBuffer());
  if (!response.ok) throw new ServerError(response.status, new TextDecoder().decode(body));
  return body;
}

async function fetchAndVerify(event) {
  event.preventDefault();
  const [user, token] = [$("user").value, $("token").value.trim()];
  if (!user || !token) return verdict("usage", "Give your user id and your proof token.", "usage");
  if (!$("key").value.trim()) return verdict("usage", "Give the custodian's verifier key first (step 1).", "usage");
  const button = $("fetch");
  button.disabled = true;
  clearDetails();
  verdict("busy", "Fetching your proof…");
  try {
    const start = performance.now();
    for (let delay = FIRST_RETRY_MS; ; delay *= 2) {
      const opts = options(user);
      const result = await verifyProofFile(await fetchProof(user, token), opts);
      const left = start + QUORUM_WAIT_MS - performance.now();
      if (result.check !== "witness-quorum" || left <= 0) return show(result, opts, "fetched from this server's /proof");
      await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
    }
  } catch (error) {
    const text = error instanceof ServerError ? error.message : `cannot fetch the proof: ${error.message}`;
    verdict("error", `Not verified: ${printableId(text)}`, "fetch");
  } finally {
    button.disabled = false;
  }
}

function dropZone() {
  const zone = $("drop");
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (e) => e.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    zone.classList.remove("over");
    openFile(e.dataTransfer.files[0]);
  });
}

loadFragment();
window.addEventListener("hashchange", loadFragment);
$("file").addEventListener("change", (e) => openFile(e.target.files[0]));
$("fetch-form").addEventListener("submit", fetchAndVerify);
dropZone();
document.body.dataset.ready = "true";
