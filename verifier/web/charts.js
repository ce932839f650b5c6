// The dashboard's charts: per asset, liabilities and reserves over the last hour,
// drawn by uPlot (vendor/uplot-*.iife.min.js, a classic script: global `uPlot`).
// Figures become floats here, for drawing only; every check and every figure shown
// as text stays BigInt. One time axis is shared by all assets, each asset's values
// aligned with it (null where the asset was absent). A chart is made when its
// place first scrolls into view and redrawn, at most once per `draw`, only while
// in view and changed: 500 assets cost 500 pushes per epoch, not 500 redraws.

const WINDOW_S = 3600;
const TRIM_AT = 300; // points beyond the window dropped in one go, not one per epoch

/** The x range: what there is of the last hour (at least a second). */
function span(min, max) {
  if (max === null) return [0, 1];
  const from = Math.max(min, max - WINDOW_S);
  return [Math.min(from, max - 1), max];
}

export class Charts {
  constructor() {
    this.times = []; // POSIX seconds (floats) of the epochs shown
    this.assets = new Map(); // id -> {liabilities, reserves, node, plot, visible, dirty}
    this.observer = new IntersectionObserver((entries) => this.seen(entries));
    window.addEventListener("resize", () => this.resize());
  }

  /** Where `asset`'s chart goes: `node`, an element in the page. */
  add(asset, node) {
    const pad = () => this.times.map(() => null);
    const entry = { liabilities: pad(), reserves: pad(), node, plot: null, visible: false, dirty: true };
    this.assets.set(asset, entry);
    node.dataset.asset = asset;
    this.observer.observe(node);
  }

  /** One verified record: `timestampMs` (BigInt) and `values`, a Map of asset ->
   * {liabilities, reserves, decimals} (BigInt, Number). */
  push(timestampMs, values) {
    const now = Number(timestampMs) / 1000;
    this.times.push(now);
    for (const [asset, entry] of this.assets) {
      const v = values.get(asset);
      const scale = v ? 10 ** v.decimals : 1;
      entry.liabilities.push(v ? Number(v.liabilities) / scale : null);
      entry.reserves.push(v ? Number(v.reserves) / scale : null);
      entry.dirty = true;
    }
    let old = 0;
    while (old < this.times.length && this.times[old] < now - WINDOW_S) old++;
    if (old >= TRIM_AT) {
      this.times.splice(0, old);
      for (const entry of this.assets.values()) {
        entry.liabilities.splice(0, old);
        entry.reserves.splice(0, old);
      }
    }
  }

  /** Forget every asset and its chart. */
  clear() {
    for (const entry of this.assets.values()) entry.plot?.destroy();
    this.observer.disconnect();
    this.assets.clear();
    this.times = [];
  }

  /** Redraw the charts in view whose data changed. */
  draw() {
    for (const entry of this.assets.values()) {
      if (!entry.visible || !entry.dirty) continue;
      entry.dirty = false;
      const data = [this.times, entry.liabilities, entry.reserves];
      if (entry.plot === null) entry.plot = this.make(entry.node, data);
      else entry.plot.setData(data);
    }
  }

  make(node, data) {
    const options = {
      width: node.clientWidth || 600,
      height: 150,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (u, min, max) => span(min, max) } },
      axes: [{}, { size: 80 }],
      series: [
        {},
        { label: "liabilities", stroke: "#b3261e", width: 1.5 },
        { label: "reserves", stroke: "#1b7f3b", width: 1.5 },
      ],
    };
    return new globalThis.uPlot(options, data, node);
  }

  seen(entries) {
    for (const { target, isIntersecting } of entries) {
      const entry = this.assets.get(target.dataset.asset);
      if (entry === undefined) continue;
      entry.visible = isIntersecting;
      if (isIntersecting) entry.dirty = true;
    }
    this.draw();
  }

  resize() {
    for (const entry of this.assets.values()) {
      if (entry.plot) entry.plot.setSize({ width: entry.node.clientWidth || 600, height: 150 });
    }
  }
}
