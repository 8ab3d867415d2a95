// Threshold drift charts of one scope, drawn with uPlot (vendored, inlined in the page).
// Live mode polls `api/history` (served next to /dashboard by the worker); static mode (the
// report) reads every scope's history from the page itself. No network beyond that.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("racer-config").textContent);
  const OVERLAP_S = 60; // re-read this much before the newest point: tolerates clock skew
  const MAX_POINTS = 5000;
  const KIND_LABEL = {
    drift: "drift",
    risk_violation: "risk violation",
    stale_calibration: "stale calibration",
  };

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

  function html(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

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

  // -- charts: uPlot (vendored in vendor/, inlined before this script) ---------------------

  const dpr = () => window.devicePixelRatio || 1;
  const color = (name) => getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
  const ALERT_COLOR = { drift: "drift", risk_violation: "risk", stale_calibration: "stale-alert" };
  const charts = {}; // figure id -> its uPlot, replaced on each render
  // Time ticks on round local times, never finer than a second.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800, 2592000];
  const timeTicks = (span) => (u, splits) =>
    splits.map((t) => clockText(t, span > 86400 ? { date: true, seconds: false } : {}));

  // What uPlot draws on its canvas beyond the series: horizontal rules with a label (alpha),
  // one vertical marker per alert (with a flag naming it on the lambda chart), "no data".
  function decorations(spec) {
    return (u) => {
      const { ctx } = u;
      const { left, top, width, height } = u.bbox;
      const k = dpr();
      ctx.save();
      ctx.font = `600 ${10 * k}px system-ui, sans-serif`;
      for (const rule of spec.rules ?? []) {
        if (!isNum(rule.value)) continue;
        const y = Math.round(u.valToPos(rule.value, "y", true));
        ctx.strokeStyle = ctx.fillStyle = color(rule.color);
        ctx.lineWidth = 1.5 * k;
        ctx.setLineDash([6 * k, 4 * k]);
        ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
        ctx.textAlign = "right";
        ctx.fillText(rule.label, left + width - 2 * k, y - 4 * k);
      }
      ctx.textAlign = "left";
      // Where a replay's phases began (a report of the demo): a thin grey line, named on top.
      for (const phase of config.phases ?? []) {
        const x = Math.round(u.valToPos(phase.at, "x", true));
        if (x < left || x > left + width) continue;
        ctx.strokeStyle = ctx.fillStyle = color("muted");
        ctx.lineWidth = 1 * k;
        ctx.setLineDash([3 * k, 3 * k]);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
        ctx.fillText(phase.name, x + 3 * k, top + 11 * k);
      }
      ctx.setLineDash([]);
      for (const alert of spec.alerts) {
        const x = Math.round(u.valToPos(alert.at, "x", true));
        if (x < left || x > left + width) continue;
        ctx.strokeStyle = ctx.fillStyle = color(ALERT_COLOR[alert.kind] ?? "drift");
        ctx.lineWidth = 1.5 * k;
        ctx.setLineDash(alert.kind === "stale_calibration" ? [2 * k, 3 * k] : []);
        ctx.beginPath(); ctx.moveTo(x, top - 6 * k); ctx.lineTo(x, top + height); ctx.stroke();
        if (spec.flags) ctx.fillText(KIND_LABEL[alert.kind] ?? alert.kind, x + 3 * k, top - 3 * k);
      }
      if (spec.empty) {
        ctx.fillStyle = color("muted");
        ctx.font = `${13 * k}px system-ui, sans-serif`;
        ctx.textAlign = "center";
        ctx.fillText(spec.empty, left + width / 2, top + height / 2);
      }
      ctx.restore();
    };
  }

  function seriesOptions(s) {
    const stroke = s.color ? color(s.color) : "transparent";
    return {
      label: s.label,
      stroke,
      width: s.width ?? (s.color ? 2 : 0),
      dash: s.dash,
      paths: s.line === false ? () => null : s.step ? uPlot.paths.stepped({ align: 1 }) : undefined,
      points: s.points
        ? { show: true, size: s.points.size ?? 7, fill: color(s.points.color), stroke: "#fff", width: 1 }
        : { show: false },
    };
  }

  // spec: { height, x: [t0, t1], y: [lo, hi], yText, xs, series, band, rules, alerts, flags, empty }
  // Each series: { label, values (one per xs), color, step, dash, line: false, points }.
  function drawChart(figure, spec) {
    const plot = figure.querySelector(".plot");
    const width = Math.max(Math.floor(plot.getBoundingClientRect().width), 320);
    const axis = { stroke: color("muted"), font: "11px system-ui, sans-serif",
      grid: { stroke: color("line"), width: 1 }, ticks: { show: false } };
    const bands = spec.band
      ? [{ series: spec.band.map((i) => i + 1), fill: color("band") }] : [];
    const options = {
      width, height: spec.height, padding: [18, 16, 0, 0],
      legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: () => spec.x }, y: { range: () => spec.y } },
      axes: [
        { ...axis, space: 90, incrs: TIME_STEPS, values: timeTicks(spec.x[1] - spec.x[0]) },
        { ...axis, size: 50, values: (u, splits) => splits.map(spec.yText) },
      ],
      series: [{}, ...spec.series.map(seriesOptions)],
      bands,
      hooks: { draw: [decorations(spec)] },
    };
    charts[figure.id]?.destroy();
    plot.replaceChildren();
    charts[figure.id] = new uPlot(options, [spec.xs, ...spec.series.map((s) => s.values)], plot);
    // What was handed to the chart, for a reader (and a test) that cannot see a canvas.
    const shown = spec.series.filter((s) => s.points);
    figure.dataset.points = String(shown.reduce((n, s) => n + s.values.filter(isNum).length, 0));
    figure.dataset.rules = String((spec.rules ?? []).filter((r) => isNum(r.value)).length);
    figure.dataset.driftMarkers = String(spec.alerts.filter((a) => a.kind === "drift").length);
    figure.dataset.alertMarkers = String(spec.alerts.length);
    figure.dataset.phaseMarkers = String((config.phases ?? []).length);
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

  // The top of a value axis: a little above the largest value, rounded up to a round step.
  function upperOf(values, floor) {
    const top = 1.1 * Math.max(floor, ...values.filter(isNum));
    const magnitude = 10 ** Math.floor(Math.log10(top / 5));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= top / 5);
    return Math.ceil(top / step - 1e-9) * step;
  }

  // One chart spec per figure, for the live page and the report alike.
  function renderCharts() {
    const ths = state.thresholds;
    const alerts = state.alerts;
    const x = timeDomain(ths, alerts);
    const empty = ths.length ? null : "no recalibration recorded yet";
    // A threshold holds until the next one: the step line runs on to the end of the axis.
    const xs = ths.map((t) => t.computed_at).concat(ths.length ? [x[1]] : []);
    const at = (key, last = null) => ths.map((t) => (isNum(t[key]) ? t[key] : null))
      .concat(ths.length ? [last] : []);
    const lastOf = (key) => (ths.length ? ths[ths.length - 1][key] : null);
    const byStatus = (status) => ({
      label: status, line: false, points: { color: status },
      values: ths.map((t) => (t.status === status ? t.lam : null)).concat(ths.length ? [null] : []),
    });
    const base = { x, xs, alerts, empty };

    drawChart(byId("chart-lam"), {
      ...base, height: 230, y: [0, 1], yText: (v) => v.toFixed(1), flags: true,
      series: [
        { label: "λ", values: at("lam", lastOf("lam")), color: "lam", step: true },
        byStatus("certified"), byStatus("stale"), byStatus("fallback"),
      ],
    });

    const alpha = lastOf("alpha");
    byId("legend-alpha-t").hidden = !ths.some((t) => isNum(t.alpha_t));
    const highs = ths.map((t) => t.realised_high).concat(ths.map((t) => t.realised_miss_rate));
    drawChart(byId("chart-risk"), {
      ...base, height: 230, y: [0, Math.min(1, upperOf(highs, 2 * (alpha ?? 0.05)))], yText: axisPct,
      rules: [{ value: alpha, label: `α = ${alpha}`, color: "alpha" }],
      band: [0, 1],
      series: [
        { label: "upper", values: at("realised_high") },
        { label: "lower", values: at("realised_low") },
        { label: "realised miss rate", values: at("realised_miss_rate"), color: "miss",
          points: { color: "miss" } },
        { label: "α_t", values: at("alpha_t", lastOf("alpha_t")), color: "alpha-t", step: true,
          width: 1.5, dash: [3, 3] },
      ],
    });

    drawChart(byId("chart-size"), {
      ...base, height: 170, y: [0, upperOf(ths.map((t) => t.mean_set_size), 1)],
      yText: (v) => fixed(v, v % 1 ? 1 : 0),
      series: [{ label: "mean set size", values: at("mean_set_size"), color: "size",
        points: { color: "size", size: 5 } }],
    });
    // Abstention is drawn only where it happened: a panel of zeros says nothing.
    const abstained = ths.some((t) => t.abstain_rate > 0);
    byId("chart-abstain").hidden = !abstained;
    if (abstained) drawChart(byId("chart-abstain"), {
      ...base, height: 170, y: [0, Math.min(1, upperOf(ths.map((t) => t.abstain_rate), 0.05))],
      yText: axisPct,
      series: [{ label: "abstention", values: at("abstain_rate"), color: "abstain",
        points: { color: "abstain", size: 5 } }],
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
      ...(state.thresholds.some((t) => t.abstain_rate > 0)
        ? [card("abstention", pct(last.abstain_rate), "share of empty sets on the window")]
        : []),
      card("window", String(last.n), `m* = ${last.m_star} · empirical risk ${pct(last.empirical_risk)}`),
      // A static page is read later: a time, never "3 s ago".
      config.mode === "static"
        ? card("last update", clockText(last.computed_at),
          `${clockText(last.computed_at, { date: true }).split(" ")[0]} · the report's last`)
        : card("last update", ageText(nowSeconds() - last.computed_at),
          clockText(last.computed_at, { date: true })),
    );
    if (config.mode !== "static") box.lastChild.querySelector(".value").id = "age";
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

  // Per model, on the window at the current threshold, the most used first.
  function renderModels() {
    const last = state.thresholds[state.thresholds.length - 1];
    const ranked = Object.entries(last?.per_model ?? {})
      .sort(([, a], [, b]) => (b.in_set_rate ?? 0) - (a.in_set_rate ?? 0));
    const body = byId("model-table").tBodies[0];
    body.replaceChildren(...ranked.map(([model, figures]) => {
      const row = html("tr", { class: "model-row" });
      row.appendChild(html("td", {}, model));
      row.appendChild(html("td", {}, pct(figures.in_set_rate)));
      row.appendChild(html("td", {}, pct(figures.price_share)));
      return row;
    }));
    if (!ranked.length) {
      const row = body.appendChild(html("tr"));
      row.appendChild(html("td", { colspan: 3, class: "hint" }, "no threshold with model figures yet"));
    }
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
    renderModels();
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
      if (response.status === 401) { window.location.assign("login"); return; } // session over
      const body = await response.json();
      // Errors are RFC 9457 problem documents (worker/http_problems.py).
      if (!response.ok) throw new Error(body.detail ?? body.title ?? `HTTP ${response.status}`);
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
