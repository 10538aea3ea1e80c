// Veil's transparency dashboard. Plain JavaScript, no dependencies: the page must work
// offline and under a CSP that allows only this file. Data goes into the page as text
// (textContent), never as HTML.
"use strict";

(function () {
  const KEY = "veil.dashboard.key";
  // Longer windows read more rows (bench/dashboard.py): refresh them less often.
  const REFRESH_MS = { "1h": 5000, "24h": 5000, "7d": 15000, "30d": 30000 };
  const TIERS = ["device", "private", "partner", "refused"];
  const TIER_NAMES = { device: "On device", private: "Private node", partner: "Partner", refused: "Refused" };
  const VIEWS = ["overview", "left", "policy", "latency", "money", "nodes", "breakers", "privacy"];
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    key: sessionStorage.getItem(KEY),
    session: null,
    view: "overview",
    last: {},            // view → JSON text last rendered (re-render only on change)
    openNodes: new Set(),
    report: null,        // the privacy report's query, once asked
    timer: null,
    seq: 0,
    bodies: {},          // view data → the JSON body last drawn (to redraw without a fetch)
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat(Infinity)) if (child) node.append(child);
    return node;
  }

  const fmt = (n) => Number(n || 0).toLocaleString("en-US");
  const plural = (n, word) => `${fmt(n)} ${word}${Number(n) === 1 ? "" : "s"}`;
  const clock = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const short = (hex) => (hex && hex.length > 20 ? `${hex.slice(0, 12)}…${hex.slice(-6)}` : hex);

  function bytes(n) {
    if (n < 1024) return `${fmt(n)} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function when(iso) {
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  function table(columns, rows, empty, rowId) {
    if (!rows.length) return el("p", { class: "empty", text: empty });
    const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null, text: c.title })));
    const body = rows.map((row) =>
      el("tr", { "data-testid": rowId ? rowId(row) : null },
        columns.map((c) => {
          const value = c.value(row);
          const cell = el("td", { class: c.num ? "num" : c.cls || null });
          cell.append(value instanceof Node ? value : document.createTextNode(value === null || value === undefined ? "—" : String(value)));
          return cell;
        })));
    // The wrapper scrolls sideways on a narrow screen instead of widening the page.
    return el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
  }

  function tiles(container, items) {
    container.replaceChildren(...items.map(([id, label, value, cls]) =>
      el("div", { class: cls || null }, el("dt", { text: label }), el("dd", { "data-testid": id, text: value }))));
  }

  function bar(value, max, cls) {
    const width = max > 0 ? Math.max(2, Math.round((value / max) * 120)) : 0;
    const span = el("span", { class: `bar ${cls || ""}` });
    span.style.width = `${width}px`;
    return span;
  }

  // ------------------------------------------------------------------ charts

  // Charts are drawn at their box's width (one SVG unit per CSS pixel), so their labels stay
  // readable on a phone; a hidden box is drawn again when its view is shown.
  const widthOf = (figure) => Math.max(300, Math.min(1600, (figure.clientWidth || 920) - 22));

  function stackedChart(figure, series, window) {
    const buckets = (series.device || []).length;
    const totals = Array.from({ length: buckets }, (_, i) => TIERS.reduce((s, t) => s + ((series[t] || [])[i] || 0), 0));
    const max = Math.max(1, ...totals);
    const W = widthOf(figure), H = 220, left = 40, bottom = 24, top = 8;
    const width = (W - left - 8) / Math.max(1, buckets);
    const scale = (H - top - bottom) / max;
    const shapes = [];
    for (let i = 0; i < buckets; i++) {
      let y = H - bottom;
      for (const tier of TIERS) {
        const v = (series[tier] || [])[i] || 0;
        if (!v) continue;
        const h = v * scale;
        y -= h;
        shapes.push(svg("rect", { x: left + i * width + 1, y, width: Math.max(1, width - 2), height: h, class: `fill-${tier}` },
          svg("title", { text: `${v} ${TIER_NAMES[tier].toLowerCase()}` })));
      }
    }
    const start = new Date(window.start), end = new Date(window.end);
    const label = (d) => (window.name === "1h" || window.name === "24h")
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })
      : d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
    const mid = new Date((start.getTime() + end.getTime()) / 2);
    const axis = [
      svg("line", { x1: left, x2: W - 8, y1: H - bottom, y2: H - bottom, class: "axis" }),
      svg("text", { x: left, y: H - 6, text: label(start) }),
      svg("text", { x: (left + W) / 2, y: H - 6, "text-anchor": "middle", text: label(mid) }),
      svg("text", { x: W - 8, y: H - 6, "text-anchor": "end", text: label(end) }),
      svg("text", { x: left - 6, y: top + 10, "text-anchor": "end", text: fmt(max) }),
      svg("text", { x: left - 6, y: H - bottom, "text-anchor": "end", text: "0" }),
    ];
    const sums = TIERS.map((t) => `${(series[t] || []).reduce((a, b) => a + b, 0)} ${TIER_NAMES[t].toLowerCase()}`);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Requests over time by tier: ${sums.join(", ")}` }, axis, shapes);
    const legend = el("div", { class: "legend", "aria-hidden": "true" },
      TIERS.map((t) => el("span", {}, el("span", { class: `swatch fill-${t}` }), TIER_NAMES[t])));
    figure.replaceChildren(chart, legend);
  }

  function barChart(figure, rows, label, value, describe, cls) {
    if (!rows.length) { figure.replaceChildren(el("p", { class: "empty", text: "Nothing in this window." })); return; }
    const max = Math.max(1, ...rows.map(value));
    const W = widthOf(figure), row = 26, H = rows.length * row + 8;
    const left = Math.min(180, Math.round(W * 0.28)), room = Math.min(240, Math.round(W * 0.4));
    const parts = rows.map((r, i) => {
      const w = Math.max(2, (value(r) / max) * (W - left - room));
      return [
        svg("text", { x: left - 8, y: i * row + 18, "text-anchor": "end", text: label(r) }),
        svg("rect", { x: left, y: i * row + 6, width: w, height: 16, rx: 3, class: cls(r) }),
        svg("text", { x: left + w + 6, y: i * row + 18, text: describe(r) }),
      ];
    });
    const summary = rows.map((r) => `${label(r)}: ${describe(r)}`).join("; ");
    figure.replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary }, parts));
  }

  // Latency: p50, p90 and p99 of each tier as three bars on one scale.
  function latencyChart(figure, rows) {
    if (!rows.length) { figure.replaceChildren(el("p", { class: "empty", text: "Nothing in this window." })); return; }
    const Q = [["p50", "p50_ms"], ["p90", "p90_ms"], ["p99", "p99_ms"]];
    const max = Math.max(0.001, ...rows.map((r) => r.p99_ms));
    const W = widthOf(figure), row = 17, group = Q.length * row + 14;
    const left = Math.min(150, Math.round(W * 0.3)), room = 90, H = rows.length * group;
    const parts = rows.map((r, g) => Q.map(([q, field], i) => {
      const y = g * group + i * row + 4, w = Math.max(2, (r[field] / max) * (W - left - room));
      return [
        i === 0 ? svg("text", { x: 0, y: y + 11, class: "strong", text: TIER_NAMES[r.tier] || r.tier }) : null,
        svg("text", { x: left - 8, y: y + 11, "text-anchor": "end", text: q }),
        svg("rect", { x: left, y, width: w, height: 13, rx: 2, class: `fill-${r.tier} q-${q}` }),
        svg("text", { x: left + w + 6, y: y + 11, text: `${ms(r[field])}` }),
      ];
    }));
    const summary = rows.map((r) => `${TIER_NAMES[r.tier] || r.tier}: ${Q.map(([q, f]) => `${q} ${ms(r[f])}`).join(", ")}`).join("; ");
    figure.replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Latency by tier. ${summary}` }, parts));
  }

  function ms(value) {
    const v = Number(value);
    return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ms`;
  }

  // ------------------------------------------------------------------ API

  class Unauthorized extends Error {}

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
    const headers = state.key ? { authorization: `Bearer ${state.key}` } : {};
    const response = await fetch(url, { headers, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    const text = await response.text();
    if (!response.ok) {
      let message = `${response.status}`;
      try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return { text, body: JSON.parse(text), response };
  }

  // ------------------------------------------------------------------ views

  function scopeParams() {
    const params = { window: $("window").value };
    if (state.session && state.session.admin) params.tenant = $("tenant-filter").value;
    return params;
  }

  function renderOverview(o) {
    const t = o.totals;
    tiles($("tiles"), [
      ["total-requests", "Requests", fmt(t.requests)],
      ["total-on_device", "On device", fmt(t.on_device), "device"],
      ["total-private", "Private node", fmt(t.private), "private"],
      ["total-partner", "Partner", fmt(t.partner), "partner"],
      ["total-refused", "Refused", fmt(t.refused), "refused"],
      ["total-left_device", "Left the device", fmt(t.left_device)],
      ["total-bytes_out", "Bytes sent to partners", bytes(t.bytes_out)],
      ["total-redactions", "Values replaced", fmt(t.redactions)],
      ["total-errors", "Errors", fmt(t.errors)],
    ]);
    stackedChart($("chart-series"), o.series, o.window);
    const maxModel = Math.max(0, ...o.by_model.map((m) => m.requests));
    $("by-model").replaceChildren(table([
      { title: "Model", value: (m) => m.model },
      { title: "Tier", value: (m) => el("span", {}, el("span", { class: `swatch fill-${m.tier}` }), m.tier) },
      { title: "Provider", value: (m) => m.provider },
      { title: "Requests", num: true, value: (m) => el("span", {}, bar(m.requests, maxModel, `fill-${m.tier}`), fmt(m.requests)) },
      { title: "Errors", num: true, value: (m) => fmt(m.errors) },
    ], o.by_model, "No requests in this window.", (m) => `model-row-${m.model}`));
    const maxCloud = Math.max(0, ...o.clouds.map((c) => c.requests));
    $("by-cloud").replaceChildren(table([
      { title: "Cloud", value: (c) => c.cloud },
      { title: "Requests", num: true, value: (c) => el("span", {}, bar(c.requests, maxCloud, "fill-partner"), fmt(c.requests)) },
    ], o.clouds, "No partner requests in this window.", (c) => `cloud-row-${c.cloud}`));

    barChart($("chart-partners"), o.partners.filter((p) => p.requests), (p) => p.partner, (p) => p.bytes_out,
      (p) => `${plural(p.requests, "request")}, ${bytes(p.bytes_out)}`, () => "fill-partner");
    $("partners").replaceChildren(table([
      { title: "Partner", value: (p) => p.partner },
      { title: "Requests", num: true, value: (p) => fmt(p.requests) },
      { title: "Bytes sent", num: true, value: (p) => bytes(p.bytes_out) },
      { title: "Values replaced", value: (p) => Object.entries(p.redactions).map(([k, v]) => `${k} ${v}`).join(", ") || "none" },
      { title: "Consents in force", num: true, value: (p) => fmt(p.consents || 0) },
    ], o.partners, "Nothing left the device for a partner in this window.", (p) => `partner-row-${p.partner}`));

    $("denials").replaceChildren(table([
      { title: "Rule", value: (d) => d.rule },
      { title: "Denied", num: true, value: (d) => fmt(d.denied) },
      { title: "Skipped", num: true, value: (d) => fmt(d.skipped) },
    ], o.policy_denials, "No policy refused or skipped anything in this window.", (d) => `denial-row-${d.rule}`));
    $("moderation").replaceChildren(table([
      { title: "Category", value: (m) => m.category },
      { title: "Stage", value: (m) => m.stage },
      { title: "Action", value: (m) => m.action },
      { title: "Events", num: true, value: (m) => fmt(m.count) },
    ], o.moderation, "No moderation events in this window.", (m) => `moderation-row-${m.category}-${m.stage}-${m.action}`));

    latencyChart($("chart-latency"), o.latency);
    $("latency").replaceChildren(table([
      { title: "Tier", value: (l) => TIER_NAMES[l.tier] || l.tier },
      { title: "Requests", num: true, value: (l) => fmt(l.count) },
      { title: "p50 (ms)", num: true, value: (l) => l.p50_ms.toFixed(2) },
      { title: "p90 (ms)", num: true, value: (l) => l.p90_ms.toFixed(2) },
      { title: "p99 (ms)", num: true, value: (l) => l.p99_ms.toFixed(2) },
    ], o.latency, "No requests in this window.", (l) => `latency-row-${l.tier}`));

    const by = o.money.spend_by;
    $("spend-title").textContent = `Spend by ${by} (${o.currency})`;
    $("spend").replaceChildren(table([
      { title: by === "tenant" ? "Tenant" : "Model", value: (s) => s.name },
      { title: `Billed (${o.currency})`, num: true, value: (s) => s.billed },
      { title: `Cost (${o.currency})`, num: true, value: (s) => s.cost },
    ], o.money.spend, "Nothing billed in this window.", (s) => `spend-row-${s.name}`));
    $("parties").replaceChildren(o.tenant && state.session.admin
      ? el("p", { class: "empty", text: "Revenue share is shown for all tenants together: pick \"All tenants\"." })
      : table([
        { title: "Party", value: (p) => p.party },
        { title: `Earned (${o.currency})`, num: true, value: (p) => p.earned },
      ], o.money.parties, "No ledger lines in this window.", (p) => `party-row-${p.party}`));

    if (o.breakers) {
      $("breakers").replaceChildren(table([
        { title: "Provider", value: (b) => b.provider },
        { title: "Model", value: (b) => b.model },
        { title: "State", value: (b) => el("span", { class: `state state-${b.state}`, text: b.state.replace("_", "-") }) },
        { title: "Failures", num: true, value: (b) => fmt(b.failures) },
        { title: "Retry after (s)", num: true, value: (b) => b.retry_after },
      ], o.breakers, "No deployment has been called yet.", (b) => `breaker-row-${b.provider}-${b.model}`));
    }
    if (o.tenants) {
      const select = $("tenant-filter");
      const chosen = select.value;
      const names = [...new Set([...o.tenants, ...(chosen ? [chosen] : [])])].sort();
      const current = [...select.options].slice(1).map((x) => x.value).join("\n");
      if (current !== names.join("\n")) {
        select.replaceChildren(el("option", { value: "", text: "All tenants" }), ...names.map((n) => el("option", { value: n, text: n })));
        select.value = chosen;
        $("tenant-names").replaceChildren(...names.map((n) => el("option", { value: n })));
      }
    }
    $("scope").textContent = o.tenant ? `Tenant ${o.tenant}` : "All tenants";
  }

  function renderNodes(data) {
    const pools = data.data;
    if (!pools.length) { $("nodes").replaceChildren(el("p", { class: "empty", text: "No private-node provider is configured." })); return; }
    let index = 0;
    $("nodes").replaceChildren(...pools.map((pool) => {
      const head = pool.log_head;
      const nodes = pool.nodes.map((n) => {
        const id = `${pool.provider} ${n.url}`;
        const details = el("details", { class: "node", "data-testid": `node-row-${index++}`, open: state.openNodes.has(id) },
          el("summary", {},
            el("strong", { text: n.url }),
            el("span", { class: `state state-${n.state}`, "data-testid": "node-summary-state", text: n.state }),
            el("span", { text: n.model ? `model ${n.model}` : "" }),
            el("span", { class: "mono", title: n.measurement || "", "data-testid": "node-summary-measurement", text: n.measurement ? short(n.measurement) : "no measurement" }),
            el("span", { text: n.release ? `release ${n.release.version}` : "" }),
            el("span", { class: "muted", text: n.expires_ms ? `expires ${when(new Date(n.expires_ms).toISOString())}` : "" })),
          el("dl", {},
            ...[
              ["State", n.state + (n.reason ? ` (${n.reason})` : "")],
              ["Why", n.detail],
              ["Measurement", n.measurement, "mono"],
              ["Model", n.model],
              ["Release", n.release ? `${n.release.name} ${n.release.version}, entry ${n.release.index} of a log of ${n.release.tree_size}` : null],
              ["Attestation expires", n.expires_ms ? when(new Date(n.expires_ms).toISOString()) : null],
              ["Last checked", n.checked_ms ? when(new Date(n.checked_ms).toISOString()) : null],
            ].filter(([, v]) => v !== null && v !== undefined && v !== "")
              .flatMap(([k, v, cls]) => [el("dt", { text: k }), el("dd", { class: cls || null, "data-testid": `node-${k.toLowerCase().replace(/ /g, "-")}`, text: v })])));
        details.addEventListener("toggle", () => { if (details.open) state.openNodes.add(id); else state.openNodes.delete(id); });
        return details;
      });
      return el("section", { "aria-label": `Provider ${pool.provider}` },
        el("h3", { text: pool.provider }),
        head
          ? el("dl", { class: "loghead", "data-testid": "log-head", "aria-label": "Transparency log head" },
            el("div", {}, el("dt", { text: "Log tree size" }), el("dd", { "data-testid": "log-tree-size", text: fmt(head.tree_size) })),
            el("div", {}, el("dt", { text: "Root hash" }), el("dd", { class: "mono", "data-testid": "log-root-hash", text: head.root_hash })),
            el("div", {}, el("dt", { text: "Signed" }), el("dd", { text: when(new Date(head.timestamp_ms).toISOString()) })))
          : el("p", { class: "empty", "data-testid": "log-head", text: "The transparency log has not been read yet." }),
        nodes);
    }));
  }

  function renderReport(r) {
    const s = r.summary;
    tiles($("privacy-summary"), [
      ["privacy-requests", "Requests", fmt(s.requests)],
      ["privacy-on_device", "Stayed on device", fmt(s.on_device), "device"],
      ["privacy-private", "Private node", fmt(s.private), "private"],
      ["privacy-partner", "Partner", fmt(s.partner), "partner"],
      ["privacy-values_replaced", "Values replaced", fmt(s.values_replaced)],
      ["privacy-bytes_out", "Bytes that left", bytes(s.bytes_out)],
    ]);
    $("privacy-table").replaceChildren(
      el("p", { class: "lead", text: `${r.user} in ${r.tenant}: ${plural(r.data.length, "request")} left the device since ${when(r.period.start)}.${r.has_more ? " Older ones are not shown." : ""}` }),
      table([
        { title: "When", value: (d) => when(d.at) },
        { title: "Tier", value: (d) => el("span", {}, el("span", { class: `swatch fill-${d.tier}` }), d.tier) },
        { title: "Partner", value: (d) => d.partner },
        { title: "Model", value: (d) => d.model },
        { title: "Cloud", value: (d) => d.cloud },
        { title: "Consent", value: (d) => d.consent },
        { title: "Values replaced", num: true, value: (d) => fmt(d.values_replaced) },
        { title: "Bytes", num: true, value: (d) => fmt(d.bytes_out) },
        { title: "Status", num: true, value: (d) => d.status },
      ], r.data, "Nothing of this user's left the device in this period.", (d) => `privacy-row-${d.id}`));
    $("export-json").disabled = false;
  }

  function reportParams() {
    const params = {};
    if (state.session.admin) params.tenant = $("privacy-tenant").value.trim();
    if (!state.session.user) params.user = $("privacy-user").value.trim();
    return params;
  }

  // ------------------------------------------------------------------ refresh

  // A refresh replaces elements; keep the keyboard focus on the same (re-created) control.
  function keepingFocus(render) {
    const active = document.activeElement;
    const owner = active && active !== document.body ? active.closest("[data-testid]") : null;
    const inSummary = active && active.tagName === "SUMMARY";
    render();
    if (!owner || active.isConnected) return;
    const again = document.querySelector(`[data-testid="${CSS.escape(owner.dataset.testid)}"]`);
    const target = again && (inSummary ? again.querySelector("summary") : again);
    if (target) target.focus({ preventScroll: true });
  }

  function apply(name, result, render) {
    if (state.last[name] === result.text) return;
    state.last[name] = result.text;
    state.bodies[name] = result.body;
    keepingFocus(() => render(result.body));
  }

  function source(view) {
    if (view === "nodes") return ["nodes", renderNodes];
    if (view === "privacy") return ["privacy", renderReport];
    return ["overview", renderOverview];
  }

  function redraw() {
    const [name, render] = source(state.view);
    if (state.session && state.bodies[name]) keepingFocus(() => render(state.bodies[name]));
  }

  function forget() {
    state.last = {};
    state.bodies = {};
  }

  async function refresh() {
    const view = state.view;
    const seq = ++state.seq;  // only the newest answer is drawn (the scope may have changed)
    try {
      const [name, render] = source(view);
      let result = null;
      if (name === "nodes") result = await api("/dashboard/api/nodes");
      else if (name === "overview") result = await api("/dashboard/api/overview", scopeParams());
      else if (state.report) result = await api("/v1/privacy/report", state.report);
      if (seq !== state.seq || !state.session) return;
      if (result) apply(name, result, render);
      $("load-error").hidden = true;
      if (result) $("updated").textContent = `updated ${clock(new Date())}`;
    } catch (error) {
      if (error instanceof Unauthorized) { logout("Your key is no longer accepted."); return; }
      $("load-error").textContent = `Could not load: ${error.message}`;
      $("load-error").hidden = false;
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    const every = ["nodes", "privacy"].includes(state.view) ? 5000 : REFRESH_MS[$("window").value] || 5000;
    state.timer = setTimeout(async () => { await refresh(); schedule(); }, every);
  }

  function show(view, focus) {
    if (!VIEWS.includes(view) || (view === "breakers" && !state.session.admin)) view = "overview";
    state.view = view;
    for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
    for (const a of document.querySelectorAll(".nav a")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    $("controls").hidden = view === "nodes" || view === "privacy";
    // Moving focus to the view's heading tells a screen reader the view changed, and the
    // next Tab goes into the view.
    if (view === "privacy" && state.session.admin && !$("privacy-tenant").value) {
      $("privacy-tenant").value = $("tenant-filter").value;
    }
    if (focus) $(`h-${view}`).focus();
    redraw();
    refresh();
    schedule();
  }

  // ------------------------------------------------------------------ session

  async function start() {
    try {
      const { body } = await api("/dashboard/api/session");
      state.session = body;
    } catch (error) {
      if (state.key) sessionStorage.removeItem(KEY);
      state.key = null;
      showLogin(error instanceof Unauthorized ? null : `Could not reach the gateway: ${error.message}`);
      return false;
    }
    $("login").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    const s = state.session;
    $("who-label").textContent = s.admin ? "Admin" : s.user ? `${s.user} (tenant ${s.tenant})` : `Tenant ${s.tenant}`;
    for (const node of document.querySelectorAll("[data-admin]")) node.hidden = !s.admin;
    $("privacy-user-field").hidden = Boolean(s.user);
    forget();
    state.report = s.user && !s.admin ? {} : null;
    show((location.hash || "#overview").slice(1));
    return true;
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    $("app").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("login-key").value = "";
    $("login-key").focus();
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    state.session = null;
    forget();
    state.report = null;
    showLogin(message || null);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("login-key").value.trim();
      if (!key) { showLogin("Enter an API key."); return; }
      state.key = key;
      sessionStorage.setItem(KEY, key);
      if (await start()) $(`h-${state.view}`).focus();
      else showLogin("That key was not accepted.");
    });
    $("logout").addEventListener("click", () => logout());
    $("window").addEventListener("change", () => { forget(); refresh(); schedule(); });
    $("tenant-filter").addEventListener("change", () => { forget(); refresh(); });
    let resizing = null;
    window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(redraw, 150); });
    window.addEventListener("hashchange", () => state.session && show(location.hash.slice(1), true));
    $("privacy-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.report = reportParams();
      state.last.privacy = null;
      delete state.bodies.privacy;
      refresh();
    });
    $("export-json").addEventListener("click", async () => {
      try {
        const { body, response } = await api("/v1/privacy/report", { ...(state.report || {}), download: "true" });
        const disposition = response.headers.get("content-disposition") || "";
        const match = /filename="([^"]+)"/.exec(disposition);
        const blob = new Blob([JSON.stringify(body, null, 2)], { type: "application/json" });
        const link = el("a", { href: URL.createObjectURL(blob), download: match ? match[1] : "veil-privacy-report.json" });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      } catch (error) {
        $("load-error").textContent = `Could not export: ${error.message}`;
        $("load-error").hidden = false;
      }
    });
    start();
  });

})();
