// Threshold drift charts, drawn as SVG from the history of one scope.
// Live mode polls `api/history` (served next to /dashboard by the worker); static mode (the
// report) reads every scope's history from the page itself. No library, no network beyond that.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("racer-config").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched
  const OVERLAP_S = 60; // re-read this much before the newest point: tolerates clock skew
  const MAX_POINTS = 5000;
  const MARGIN = { top: 16, right: 18, bottom: 24, left: 50 };
  const KIND_LABEL = {
    drift: "drift",
    risk_violation: "risk violation",
    stale_calibration: "stale calibration",
  };
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800, 2592000];

  const state = {
    scope: null,
    scopes: config.scopes,
    thresholds: [],
    alerts: [],
    seen: new Set(),
    newest: null, // newest time seen, for the next incremental read
    updatedAt: null,
    error: null,
    timer: null,
  };

  // -- small helpers ------------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fixed = (v, digits) => (isNum(v) ? v.toFixed(digits) : "–");
  const pct = (v, digits = 1) => (isNum(v) ? `${(100 * v).toFixed(digits)}%` : "–");
  const axisPct = (v) => `${Number((100 * v).toFixed(1))}%`; // 5%, 2.5%, 10%
  const pad2 = (n) => String(n).padStart(2, "0");

  function element(tag, attrs = {}, text = null, ns = null) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }
  const html = (tag, attrs, text) => element(tag, attrs, text);
  const svg = (tag, attrs, text) => element(tag, attrs, text, SVG_NS);

  function clockText(t, { date = false, seconds = true } = {}) {
    const d = new Date(t * 1000);
    const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}` +
      (seconds ? `:${pad2(d.getSeconds())}` : "");
    if (!date) return time;
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${time}`;
  }

  function ageText(seconds) {
    if (!isNum(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} days ago`;
  }

  const nowSeconds = () => (config.mode === "static" ? config.generated_at : Date.now() / 1000);

  // -- scales and ticks ---------------------------------------------------------------------

  function scale(d0, d1, r0, r1) {
    const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
    return (v) => r0 + (v - d0) * k;
  }

  function valueTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) ticks.push(v);
    return { ticks, step };
  }

  function timeTicks(t0, t1, count) {
    const span = Math.max(t1 - t0, 1);
    const step = TIME_STEPS.find((s) => span / s <= count) ?? Math.ceil(span / count / 86400) * 86400;
    const offset = -new Date(t0 * 1000).getTimezoneOffset() * 60; // ticks on local round times
    const ticks = [];
    for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1; t += step) ticks.push(t);
    return { ticks, step };
  }

  function timeTickText(t, step) {
    if (step >= 86400) {
      const d = new Date(t * 1000);
      return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
    }
    return clockText(t, { seconds: step < 60 });
  }

  // -- one chart ------------------------------------------------------------------------------

  // spec: { height, x: [t0, t1], y: [lo, hi], yText, points, series, band, rules, alerts, empty }
  function drawChart(figure, spec) {
    const plot = figure.querySelector(".plot");
    const width = Math.max(Math.floor(plot.getBoundingClientRect().width), 320);
    const height = spec.height;
    const root = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": figure.querySelector("figcaption").textContent,
      "data-points": spec.points.reduce((sum, p) => sum + p.values.length, 0),
    });
    const left = MARGIN.left;
    const right = width - MARGIN.right;
    const top = MARGIN.top;
    const bottom = height - MARGIN.bottom;
    const x = scale(spec.x[0], spec.x[1], left, right);
    const y = scale(spec.y[0], spec.y[1], bottom, top);

    const grid = root.appendChild(svg("g", { class: "grid" }));
    for (const v of valueTicks(spec.y[0], spec.y[1], Math.max(2, Math.floor(height / 45))).ticks) {
      grid.appendChild(svg("line", { x1: left, x2: right, y1: y(v), y2: y(v) }));
      root.appendChild(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, spec.yText(v)));
    }
    const time = timeTicks(spec.x[0], spec.x[1], Math.max(2, Math.floor(width / 110)));
    for (const t of time.ticks) {
      root.appendChild(svg("text", { x: x(t), y: bottom + 16, "text-anchor": "middle" },
        timeTickText(t, time.step)));
    }
    root.appendChild(svg("line", { class: "axis-line", x1: left, x2: right, y1: bottom, y2: bottom }));

    if (spec.empty) {
      root.appendChild(svg("text", {
        class: "no-data", x: (left + right) / 2, y: (top + bottom) / 2, "text-anchor": "middle",
      }, spec.empty));
    }
    for (const band of spec.band ?? []) {
      for (const run of runs(band.values, (v) => isNum(v[1]) && isNum(v[2]))) {
        const upper = run.map((v) => `${x(v[0])},${y(v[2])}`);
        const lower = run.slice().reverse().map((v) => `${x(v[0])},${y(v[1])}`);
        root.appendChild(svg("polygon", { class: band.cls, points: upper.concat(lower).join(" ") }));
      }
    }
    for (const rule of spec.rules ?? []) {
      if (!isNum(rule.value)) continue;
      root.appendChild(svg("line", { class: rule.cls, x1: left, x2: right, y1: y(rule.value), y2: y(rule.value) }));
      root.appendChild(svg("text", {
        class: "alpha-label", x: right - 2, y: y(rule.value) - 4, "text-anchor": "end",
      }, rule.label));
    }
    for (const line of spec.series ?? []) {
      for (const run of runs(line.values, (v) => isNum(v[1]))) {
        root.appendChild(svg("path", { class: line.cls, d: pathOf(run, x, y, line.step, spec.x[1]) }));
      }
    }
    drawAlerts(root, spec.alerts, x, top, bottom, spec.flags);
    for (const set of spec.points) {
      const group = root.appendChild(svg("g", { class: "points" }));
      for (const v of set.values) {
        const dot = group.appendChild(svg("circle", {
          class: `${set.cls} ${v.extra ?? ""}`.trim(), cx: x(v.t), cy: y(v.y), r: set.r ?? 3.5,
        }));
        dot.appendChild(svg("title", {}, v.title));
      }
    }
    plot.replaceChildren(root);
  }

  function runs(values, ok) {
    const out = [];
    let current = [];
    for (const v of values) {
      if (ok(v)) current.push(v);
      else if (current.length) { out.push(current); current = []; }
    }
    if (current.length) out.push(current);
    return out;
  }

  function pathOf(run, x, y, step, end) {
    if (!step) return run.map((v, i) => `${i ? "L" : "M"}${x(v[0])},${y(v[1])}`).join(" ");
    // A threshold holds until the next recalibration: draw it as steps up to the end.
    const parts = [`M${x(run[0][0])},${y(run[0][1])}`];
    for (let i = 1; i < run.length; i++) {
      parts.push(`H${x(run[i][0])}`, `V${y(run[i][1])}`);
    }
    parts.push(`H${x(end)}`);
    return parts.join(" ");
  }

  function drawAlerts(root, alerts, x, top, bottom, flags) {
    const group = root.appendChild(svg("g", { class: "alerts" }));
    for (const alert of alerts) {
      const kind = `alert-${alert.kind}`;
      const marker = group.appendChild(svg("line", {
        class: `alert-marker ${kind}`, "data-kind": alert.kind,
        x1: x(alert.at), x2: x(alert.at), y1: top - 6, y2: bottom,
      }));
      marker.appendChild(svg("title", {},
        `${clockText(alert.at, { date: true })} · ${KIND_LABEL[alert.kind] ?? alert.kind}: ${alert.message}`));
      if (flags) {
        group.appendChild(svg("text", {
          class: `alert-flag ${kind}`, x: x(alert.at) + 3, y: top - 4,
        }, KIND_LABEL[alert.kind] ?? alert.kind));
      }
    }
  }

  // -- the page -------------------------------------------------------------------------------

  function timeDomain(thresholds, alerts) {
    const times = thresholds.map((t) => t.computed_at).concat(alerts.map((a) => a.at));
    if (!times.length) {
      const now = nowSeconds();
      return [now - 600, now];
    }
    const t0 = Math.min(...times);
    const t1 = Math.max(...times);
    const pad = t1 > t0 ? (t1 - t0) * 0.03 : 30;
    return [t0 - pad, t1 + pad];
  }

  // The top of a value axis: a little above the largest value, rounded up to a tick.
  function upperOf(values, floor) {
    const top = 1.1 * Math.max(floor, ...values.filter(isNum));
    const { step } = valueTicks(0, top, 5);
    return Math.ceil(top / step - 1e-9) * step;
  }

  function pointTitle(t, what) {
    return `v${t.version} · ${clockText(t.computed_at, { date: true })} · ${what}` +
      ` · ${t.status}, n = ${t.n}, ${t.reason}`;
  }

  function renderCharts() {
    const ths = state.thresholds;
    const alerts = state.alerts;
    const x = timeDomain(ths, alerts);
    const empty = ths.length ? null : "no recalibration recorded yet";
    const at = (key) => ths.map((t) => [t.computed_at, t[key]]);
    const dots = (cls, key, show) => ({
      cls,
      values: ths.filter((t) => isNum(t[key])).map((t) => ({
        t: t.computed_at, y: t[key], title: pointTitle(t, show(t[key])),
        extra: cls === "lam-point" ? `status-${t.status}` : "",
      })),
    });

    drawChart(byId("chart-lam"), {
      height: 230, x, y: [0, 1], yText: (v) => v.toFixed(1), empty, flags: true, alerts,
      series: [{ cls: "series lam", values: at("lam"), step: true }],
      points: [dots("lam-point", "lam", (v) => `λ = ${fixed(v, 4)}`)],
    });

    const alpha = ths.length ? ths[ths.length - 1].alpha : null;
    byId("legend-alpha-t").hidden = !ths.some((t) => isNum(t.alpha_t));
    const highs = ths.map((t) => t.realised_high).concat(ths.map((t) => t.realised_miss_rate));
    drawChart(byId("chart-risk"), {
      height: 230, x, y: [0, Math.min(1, upperOf(highs, 2 * (alpha ?? 0.05)))],
      yText: axisPct, empty, alerts,
      band: [{ cls: "band", values: ths.map((t) => [t.computed_at, t.realised_low, t.realised_high]) }],
      rules: [{ cls: "alpha-line", value: alpha, label: `α = ${alpha}` }],
      series: [
        { cls: "series miss", values: at("realised_miss_rate") },
        { cls: "alpha-t-line", values: at("alpha_t"), step: true },
      ],
      points: [dots("miss-point", "realised_miss_rate", (v) => `realised miss rate ${pct(v)}`)],
    });

    const sizes = ths.map((t) => t.mean_set_size);
    drawChart(byId("chart-size"), {
      height: 170, x, y: [0, upperOf(sizes, 1)], yText: (v) => fixed(v, v % 1 ? 1 : 0), empty, alerts,
      series: [{ cls: "series size", values: at("mean_set_size") }],
      points: [{ ...dots("size-point", "mean_set_size", (v) => `mean set size ${fixed(v, 2)}`), r: 2.5 }],
    });
    drawChart(byId("chart-abstain"), {
      height: 170, x, y: [0, Math.min(1, upperOf(ths.map((t) => t.abstain_rate), 0.05))],
      yText: axisPct, empty, alerts,
      series: [{ cls: "series abstain", values: at("abstain_rate") }],
      points: [{ ...dots("abstain-point", "abstain_rate", (v) => `abstention ${pct(v)}`), r: 2.5 }],
    });
  }

  function card(label, value, detail, level = "") {
    const node = html("div", { class: `card ${level}`.trim() });
    node.appendChild(html("div", { class: "label" }, label));
    const shown = node.appendChild(html("div", { class: "value" }));
    if (value instanceof Node) shown.appendChild(value);
    else shown.textContent = value;
    node.appendChild(html("div", { class: "detail" }, detail));
    return node;
  }

  function renderSummary() {
    const box = byId("summary");
    const last = state.thresholds[state.thresholds.length - 1];
    if (!last) {
      box.replaceChildren(html("div", { class: "empty" },
        `No threshold recorded for scope ${state.scope ?? "–"} yet.`));
      return;
    }
    const lam = html("span", {}, `${fixed(last.lam, 3)} `);
    lam.appendChild(html("span", { class: `badge status-${last.status}` }, last.status));
    const rate = last.realised_miss_rate;
    const level = !isNum(rate) ? "" : last.realised_low > last.alpha ? "bad"
      : rate > last.alpha ? "warn" : "";
    box.replaceChildren(
      card("threshold λ", lam, `version ${last.version} · ${last.reason}`,
        last.status === "certified" ? "" : last.status === "stale" ? "warn" : "bad"),
      card("target α", String(last.alpha),
        isNum(last.alpha_t) ? `α_t = ${fixed(last.alpha_t, 4)} · δ = ${last.delta}` : `δ = ${last.delta}`),
      card("realised miss rate", pct(rate),
        isNum(rate) ? `[${pct(last.realised_low)}, ${pct(last.realised_high)}] · n ${last.realised_n}`
          : "no audited outcome yet", level),
      card("mean set size", fixed(last.mean_set_size, 2), `mean price ${fixed(last.mean_price, 3)}`),
      card("abstention", pct(last.abstain_rate), `empirical risk ${pct(last.empirical_risk)}`),
      card("window", String(last.n), `m* = ${last.m_star}`),
      card("last update", ageText(nowSeconds() - last.computed_at),
        clockText(last.computed_at, { date: true })),
    );
    box.lastChild.querySelector(".value").id = "age";
  }

  function renderAlerts() {
    const rows = state.alerts.slice().reverse();
    byId("alert-count").textContent = rows.length ? `${rows.length}` : "none";
    const body = byId("alert-table").tBodies[0];
    body.replaceChildren(...rows.slice(0, 200).map((a) => {
      const row = html("tr", { class: "alert-row" });
      row.appendChild(html("td", {}, clockText(a.at, { date: true })));
      const kind = row.appendChild(html("td"));
      kind.appendChild(html("span", { class: `badge alert-${a.kind}` }, KIND_LABEL[a.kind] ?? a.kind));
      row.appendChild(html("td", {}, a.message));
      return row;
    }));
  }

  function renderStatus() {
    const status = byId("connection");
    status.classList.toggle("error", Boolean(state.error));
    if (state.error) status.textContent = `not updating: ${state.error}`;
    else if (config.mode === "static") status.textContent = `report of ${clockText(config.generated_at, { date: true })}`;
    else if (state.updatedAt) status.textContent = `live · updated ${clockText(state.updatedAt)}`;
    else status.textContent = "loading…";
    byId("scope-name").textContent = state.scopes.length > 1 ? "" : state.scope ?? "";
    const age = byId("age");
    const last = state.thresholds[state.thresholds.length - 1];
    if (age && last) age.textContent = ageText(nowSeconds() - last.computed_at);
  }

  function render() {
    renderSummary();
    renderCharts();
    renderAlerts();
    renderStatus();
    document.body.dataset.thresholds = String(state.thresholds.length);
    document.body.dataset.alerts = String(state.alerts.length);
    document.body.dataset.state = state.error ? "error" : "ready";
  }

  // -- data -----------------------------------------------------------------------------------

  function reset() {
    state.thresholds = [];
    state.alerts = [];
    state.seen = new Set();
    state.newest = null;
  }

  function merge(thresholds, alerts) {
    for (const t of thresholds) {
      const key = `t${t.version}@${t.computed_at}`;
      if (!state.seen.has(key)) { state.seen.add(key); state.thresholds.push(t); }
    }
    for (const a of alerts) {
      const key = `a${a.at}|${a.kind}|${a.message}`;
      if (!state.seen.has(key)) { state.seen.add(key); state.alerts.push(a); }
    }
    state.thresholds.sort((a, b) => a.computed_at - b.computed_at || a.version - b.version);
    state.alerts.sort((a, b) => a.at - b.at);
    state.thresholds = state.thresholds.slice(-MAX_POINTS);
    state.alerts = state.alerts.slice(-MAX_POINTS);
    const times = state.thresholds.map((t) => t.computed_at).concat(state.alerts.map((a) => a.at));
    if (times.length) state.newest = Math.max(...times);
  }

  async function poll() {
    const scope = state.scope;
    const since = state.newest === null ? config.since : Math.max(config.since, state.newest - OVERLAP_S);
    try {
      const query = new URLSearchParams({ scope, since: String(since) });
      const response = await fetch(`api/history?${query}`, { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
      if (scope !== state.scope) return; // the scope changed while this was on its way
      merge(body.thresholds, body.alerts);
      setScopes(body.scopes);
      state.error = null;
      state.updatedAt = Date.now() / 1000;
    } catch (error) {
      state.error = error instanceof Error ? error.message : String(error);
    }
    render();
    state.timer = setTimeout(poll, config.refresh_ms);
  }

  function setScopes(scopes) {
    state.scopes = scopes;
    const select = byId("scope-select");
    byId("scope-picker").hidden = scopes.length < 2;
    if ([...select.options].map((o) => o.value).join("\n") !== scopes.join("\n")) {
      select.replaceChildren(...scopes.map((s) => html("option", { value: s }, s)));
    }
    select.value = state.scope;
  }

  function show(scope) {
    state.scope = scope;
    byId("scope-select").value = scope;
    const url = new URL(window.location.href);
    url.searchParams.set("scope", scope);
    if (url.protocol !== "file:") window.history.replaceState(null, "", url);
    reset();
    if (config.mode === "static") {
      const found = config.history[scope] ?? { thresholds: [], alerts: [] };
      merge(found.thresholds, found.alerts);
      render();
      return;
    }
    clearTimeout(state.timer);
    render();
    poll();
  }

  function start() {
    const asked = new URL(window.location.href).searchParams.get("scope");
    setScopes(state.scopes);
    byId("scope-select").addEventListener("change", (event) => show(event.target.value));
    byId("footer").textContent = config.footer;
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(render, 150);
    });
    if (config.mode !== "static") setInterval(renderStatus, 1000);
    show(state.scopes.includes(asked) ? asked : state.scopes[0]);
  }

  start();
})();
