// The live dashboard (dashboard.html): subscribe to this server's /roots and verify
// every frame here, with the auditor's rules (audit.js) under the verifier key
// pinned in the URL fragment (`#key=...&witness=...&quorum=K&since=N`) or pasted.
// Frames are verified one at a time, in order; the page is redrawn at most once per
// animation frame, whatever arrived meanwhile. A verification failure is an alarm
// with its evidence (the frame as received and the last verified checkpoint) and
// stops the watch, as `solvency-verify watch` does; an asset turning insolvent or
// unproven is an alarm too, once per turn. After a disconnect the watch resumes
// from the last verified size (`since`), after a capped, jittered backoff. With
// `assets=A,B` in the fragment it follows those assets only (`/roots?assets=`),
// each proven present or absent (an absent one is an alarm), and says that the
// record's other assets are not followed: neither received nor verified. Reports
// come once: those the last record binds are kept, for an epoch's alarm evidence.

import { FormatError, UsageError, VerificationError } from "./errors.js";
import { formatAmount, formatTime } from "./display.js";
import { loadAssets, loadVerifierKey, loadWitnessKeys } from "./inputs.js";
import { parseMessage } from "./stream.js";
import { ALL_ASSETS, boundReports, checkEpoch, FIRST_CONTACT_CHECKS, staleSources, subscriptionQuery } from "./audit.js";
import { Charts } from "./charts.js";
import { $, downloadLink, el, fragmentOptions, proverUrl, setText } from "./page.js";

const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
const CADENCE_EPOCHS = 60;
const MAX_ALARMS = 200; // shown; the oldest go

const watch = {
  config: null, // {key, witnesses, quorum, since, subscription}
  state: null, // the last verified state (audit.js)
  record: null, // its record
  reports: new Map(), // those its record binds (audit.js)
  socket: null,
  stopped: true,
  retries: 0,
  timer: null,
  queue: [],
  busy: false,
  drawing: false,
  intervals: [], // BigInt ms between consecutive verified records
  statuses: new Map(), // asset -> status alarmed and not recovered
  witnessAlarm: null,
  stats: { count: 0, totalMs: 0, maxMs: 0, lastMs: 0 },
};
const views = new Map(); // asset -> the nodes of its card
const charts = new Charts();

function connection(text, state) {
  const pill = $("connection");
  setText(pill, text);
  pill.dataset.state = state;
}

function ms(value) {
  return `${value / 1000n}.${String(value % 1000n).padStart(3, "0")} s`;
}

// alarms

/** An alarm about `frame` (its text as received); `epoch` when it verified. */
function alarm(kind, check, reason, frame, epoch = null) {
  const evidence = {
    check,
    reason,
    received: new Date().toISOString(),
    last_verified_checkpoint: watch.state?.checkpoint ?? null,
    frame,
  };
  if (epoch !== null) evidence.reports = [...watch.reports.values()].map((r) => new TextDecoder().decode(r));
  const name = `evidence-${Date.now()}-${check}.json`;
  const at = epoch === null ? "" : ` epoch ${epoch}`;
  const item = el("li", { className: kind, data: { check } }, `${formatTime(BigInt(Date.now()))}${at} ${check}: ${reason}`);
  item.append(" ", downloadLink("evidence (JSON)", name, evidence));
  $("alarm-list").prepend(item);
  if ($("alarm-list").children.length > MAX_ALARMS) $("alarm-list").lastChild.remove();
  $("alarms").hidden = false;
}

function violation(check, reason, frame) {
  alarm("violation", check, reason, frame);
  stop(`stopped: ${check}`, "failed");
}

// the connection

function stop(text, state) {
  watch.stopped = true;
  watch.queue = [];
  clearTimeout(watch.timer);
  if (watch.socket) watch.socket.close();
  watch.socket = null;
  connection(text, state);
}

function connect() {
  const since = watch.state?.size ?? watch.config.since;
  const prover = proverUrl();
  const scheme = prover.protocol === "https:" ? "wss:" : "ws:";
  const query = `${since === null ? "" : `&since=${since}`}${subscriptionQuery(watch.config.subscription)}`;
  const socket = new WebSocket(`${scheme}//${prover.host}/roots${query.replace("&", "?")}`);
  watch.socket = socket;
  connection("connecting", "connecting");
  socket.onopen = () => connection("connected", "connected");
  socket.onmessage = (event) => {
    if (socket !== watch.socket) return;
    watch.queue.push(event.data);
    pump();
  };
  socket.onclose = () => {
    if (socket !== watch.socket || watch.stopped) return;
    const delay = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** watch.retries++) * (0.5 + Math.random() / 2);
    connection(`disconnected: again in ${(delay / 1000).toFixed(1)} s`, "waiting");
    watch.timer = setTimeout(connect, delay);
  };
}

/** Forget what was verified, and what the page shows of it. */
function forget() {
  Object.assign(watch, { state: null, record: null, reports: new Map(), intervals: [], statuses: new Map(), witnessAlarm: null });
  watch.stats = { count: 0, totalMs: 0, maxMs: 0, lastMs: 0 };
  views.clear();
  charts.clear();
  $("assets").replaceChildren();
}

async function start() {
  const pinned = fragmentOptions();
  let config;
  try {
    const key = await loadVerifierKey($("key").value);
    const { witnesses, quorum } = await loadWitnessKeys(pinned.witnesses, pinned.quorum ?? undefined);
    const assets = pinned.assets === null ? null : loadAssets(pinned.assets);
    config = { key, witnesses, quorum, since: pinned.since, subscription: { ...ALL_ASSETS, assets } };
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    return stop(`cannot watch: ${error.message}`, "failed");
  }
  stop("starting", "connecting");
  const asked = (c) => `${c?.key.text} ${c?.subscription.assets}`;
  if (asked(watch.config) !== asked(config)) forget(); // another log, or other assets
  watch.config = config;
  watch.stopped = false;
  watch.retries = 0;
  connect();
}

// verification

async function pump() {
  if (watch.busy) return;
  watch.busy = true;
  try {
    while (watch.queue.length && !watch.stopped) await verify(watch.queue.shift());
  } finally {
    watch.busy = false;
  }
  scheduleDraw();
}

async function verify(frame) {
  const began = performance.now();
  const { key, witnesses, quorum, subscription } = watch.config;
  let message;
  let audit;
  try {
    message = parseMessage(frame);
    audit = await checkEpoch(watch.state, message, key, { witnesses, quorum, subscription });
  } catch (error) {
    if (error instanceof VerificationError) {
      if (watch.state === null && FIRST_CONTACT_CHECKS.has(error.check)) {
        return stop(`not this log's key: ${error.message} (nothing was verified, so this is no evidence)`, "failed");
      }
      return violation(error.check, error.detail, frame);
    }
    if (error instanceof FormatError) return violation("format", `malformed: ${error.message}`, frame);
    throw error;
  }
  const previous = watch.state;
  watch.state = audit.state;
  watch.record = audit.record;
  watch.reports = await boundReports(watch.reports, audit.record, message.reports);
  watch.retries = 0;
  if (previous !== null) {
    watch.intervals.push(audit.state.timestampMs - previous.timestampMs);
    if (watch.intervals.length > CADENCE_EPOCHS) watch.intervals.shift();
  }
  track(audit, frame);
  const spent = performance.now() - began;
  const s = watch.stats;
  [s.count, s.totalMs, s.lastMs, s.maxMs] = [s.count + 1, s.totalMs + spent, spent, Math.max(s.maxMs, spent)];
}

function track(audit, frame) {
  const { record } = audit;
  const values = new Map();
  for (const a of record.assets) {
    if (!views.has(a.asset)) card(a.asset);
    values.set(a.asset, a);
  }
  for (const asset of record.absent ?? []) if (!views.has(asset)) card(asset);
  charts.push(record.timestampMs, values);
  const now = new Map(audit.findings.map((f) => [f.asset, f]));
  for (const f of audit.findings) {
    if (watch.statuses.get(f.asset) === f.status) continue;
    const a = values.get(f.asset);
    const money = (v) => formatAmount(v, a.decimals);
    const detail = f.status === "insolvent" ? `reserves ${money(a.reserves)} < liabilities ${money(a.liabilities)}` : f.detail;
    alarm("finding", f.status, `${f.asset}: ${detail}`, frame, record.epoch);
  }
  watch.statuses = new Map([...now].map(([asset, f]) => [asset, f.status]));
  const failure = audit.witnessFailure;
  if (failure !== null && failure.check !== watch.witnessAlarm) alarm("violation", failure.check, failure.detail, frame, record.epoch);
  watch.witnessAlarm = failure?.check ?? null;
}

// drawing

function card(asset) {
  const status = el("span", { className: "pill" });
  const figures = el("p", { className: "figures" });
  const stale = el("p", { className: "stale" });
  const chart = el("div", { className: "chart" });
  const node = el("article", { className: "asset", data: { asset } }, el("h3", {}, asset, status), figures, stale, chart);
  $("assets").append(node);
  views.set(asset, { status, figures, stale });
  charts.add(asset, chart);
}

function scheduleDraw() {
  if (watch.drawing) return;
  watch.drawing = true;
  requestAnimationFrame(() => {
    watch.drawing = false;
    draw();
  });
}

function draw() {
  const { state, record, stats, intervals } = watch;
  if (record === null) return;
  const began = performance.now();
  const mean = intervals.length ? intervals.reduce((a, b) => a + b, 0n) / BigInt(intervals.length) : null;
  const solvent = record.assets.filter((a) => a.status === "SOLVENT").length;
  const chosen = watch.config.subscription.assets;
  setText($("epoch"), String(record.epoch));
  setText($("epoch-time"), formatTime(record.timestampMs));
  setText($("log-size"), String(state.size));
  setText($("cadence"), mean === null ? "—" : `${ms(intervals.at(-1))} (mean ${ms(mean)} over ${intervals.length})`);
  setText($("solvent"), `${solvent} of ${record.assets.length} ${chosen ? "followed " : ""}assets`);
  const others = record.assetCount - record.assets.length;
  setText($("followed"), chosen ? `${chosen.join(", ")} only: ${others} other asset(s) of the record not followed` : "every asset");
  setText($("verified"), `${stats.count} epochs, ${stats.lastMs.toFixed(1)} ms the last (mean ${(stats.totalMs / stats.count).toFixed(1)} ms)`);
  Object.assign($("verified").dataset, { count: stats.count, meanMs: stats.totalMs / stats.count, maxMs: stats.maxMs });
  for (const a of record.assets) {
    const view = views.get(a.asset);
    const status = a.status.toLowerCase();
    setText(view.status, status);
    if (!view.status.classList.contains(`status-${status}`)) view.status.className = `pill status-${status}`;
    setText(view.figures, `liabilities ${formatAmount(a.liabilities, a.decimals)} · reserves ${formatAmount(a.reserves, a.decimals)}`);
    const stale = staleSources(record, a);
    setText(view.stale, stale.length ? `stale reserve sources: ${stale.join(", ")}` : "");
  }
  for (const asset of record.absent ?? []) {
    const view = views.get(asset);
    setText(view.status, "absent");
    view.status.className = "pill status-absent";
    setText(view.figures, "not in this epoch's record");
    setText(view.stale, "");
  }
  charts.draw();
  $("verified").dataset.drawMs = performance.now() - began;
}

function init() {
  const pinned = fragmentOptions();
  const witnesses = pinned.witnesses.length;
  setText($("witnesses"), witnesses ? `${witnesses} pinned, quorum ${pinned.quorum ?? witnesses}` : "none pinned");
  if (pinned.key !== null) {
    $("key").value = pinned.key;
    start();
  }
}

$("connect").addEventListener("click", start);
window.addEventListener("hashchange", init);
init();
