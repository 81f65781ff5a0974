// aNode's dashboard: reads /dashboard/api/* and draws it with uPlot (vendored beside this file).
// Each chart's element carries what it drew in data-series (JSON: x in Unix seconds, and per
// series its label and values), and window.anodeCharts[id] is its uPlot instance, so a test, or
// an operator's script, can read the plotted numbers.
"use strict";

(function () {
  const root = document.body.dataset.root || "";
  const HOUR = 3600, DAY = 86400;
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];

  async function api(path) {
    const response = await fetch(root + "/dashboard/api/" + path, { credentials: "same-origin" });
    if (response.status === 401) { window.location.reload(); throw new Error("logged out"); }
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  const eth = (wei) => Number(BigInt(wei || "0")) / 1e18;
  const seconds = (iso) => Math.floor(Date.parse(iso) / 1000);
  // axis labels: enough digits to tell 99.9994 from 100, and no float noise
  const amount = (v) => (v === 0 ? "0" : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-4 ? v.toExponential(2) : String(Number(v.toPrecision(6))));
  const short = (hex) => (hex ? hex.slice(0, 8) + "…" + hex.slice(-4) : "");

  function steps(span, step) {
    const last = Math.floor(Date.now() / 1000 / step) * step;
    const xs = [];
    for (let t = last - span + step; t <= last; t += step) xs.push(t);
    return xs;
  }

  function chart(id, xs, series, options) {
    const element = document.getElementById(id);
    element.dataset.series = JSON.stringify({ x: xs, series: series.map((s) => ({ label: s.label, values: s.values })) });
    const width = Math.max(320, element.clientWidth || 560);
    const opts = {
      width: width, height: 240,
      scales: { x: { time: true } },
      series: [{}].concat(series.map((s, i) => Object.assign({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2,
        fill: s.bars ? (s.color || COLORS[i % COLORS.length]) + "55" : undefined,
        paths: s.bars ? uPlot.paths.bars({ size: [0.8 / series.length, 40] }) : undefined,
        points: { show: xs.length <= 31 },
      }, s.extra || {}))),
      axes: [{}, { size: 80, values: (u, ticks) => ticks.map(amount) }],
    };
    Object.assign(opts, options || {});
    const plot = new uPlot(opts, [xs].concat(series.map((s) => s.values)), element);
    (window.anodeCharts = window.anodeCharts || {})[id] = plot;  // what was drawn, for tests and scripts
    element.dataset.drawn = "true";
  }

  function table(id, head, rows) {
    const element = document.getElementById(id);
    element.replaceChildren();
    const tr = document.createElement("tr");
    head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    element.appendChild(tr);
    rows.forEach((row) => {
      const line = document.createElement("tr");
      row.forEach((cell) => {
        const td = document.createElement("td");
        const value = cell && typeof cell === "object" ? cell : { text: cell };
        td.textContent = value.text === null || value.text === undefined ? "" : String(value.text);
        if (value.cls) td.className = value.cls;
        line.appendChild(td);
      });
      element.appendChild(line);
    });
    if (!rows.length) {
      const line = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = head.length; td.className = "empty"; td.textContent = "nothing yet";
      line.appendChild(td); element.appendChild(line);
    }
  }

  // spend: one reserved and one actual series per group (a chain, or a policy), on every hour (or
  // day) of the window
  function spendSeries(rows, xs, step, bars, group, name) {
    const groups = [...new Set(rows.map(group))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = [];
    groups.forEach((g) => {
      const reserved = xs.map(() => 0), actual = xs.map(() => 0);
      rows.filter((r) => group(r) === g).forEach((r) => {
        const i = index.get(Math.floor(seconds(r.bucket) / step) * step);
        if (i === undefined) return;
        reserved[i] += eth(r.reservedWei);
        actual[i] += eth(r.actualWei);
      });
      series.push({ label: name(g) + " reserved", values: reserved, bars: bars });
      series.push({ label: name(g) + " actual", values: actual, bars: bars });
    });
    return series;
  }
  const byChain = (r) => r.chainId, chainName = (chain) => "chain " + chain;

  async function spend() {
    const [hourly, daily] = await Promise.all([api("spend?bucket=hour&hours=48"), api("spend?bucket=day&hours=720")]);
    const hours = steps(48 * HOUR, HOUR), days = steps(30 * DAY, DAY);
    chart("spend-hour", hours, spendSeries(hourly.rows, hours, HOUR, false, byChain, chainName));
    chart("spend-day", days, spendSeries(daily.rows, days, DAY, true, byChain, chainName));
    const tenants = new Map();
    hourly.rows.forEach((r) => {
      const key = r.apiKeyId || "(open)";
      const t = tenants.get(key) || { operations: 0, included: 0, reserved: 0n, actual: 0n };
      t.operations += r.operations; t.included += r.included;
      t.reserved += BigInt(r.reservedWei); t.actual += BigInt(r.actualWei);
      tenants.set(key, t);
    });
    table("tenants", ["API key", "operations", "included", "reserved (ETH)", "actual (ETH)"],
      [...tenants.entries()].map(([key, t]) => [key, { text: t.operations, cls: "num" }, { text: t.included, cls: "num" },
        { text: eth(t.reserved.toString()).toFixed(6), cls: "num" }, { text: eth(t.actual.toString()).toFixed(6), cls: "num" }]));
  }

  // per policy (summed over chains): what its amount limits reserved, and what reconciliation settled
  async function policySpend() {
    const [hourly, daily] = await Promise.all([
      api("policy-spend?bucket=hour&hours=48"), api("policy-spend?bucket=day&hours=720")]);
    const hours = steps(48 * HOUR, HOUR), days = steps(30 * DAY, DAY);
    const byPolicy = (r) => r.policyId, policyName = (id) => "policy " + id;
    chart("policy-spend-hour", hours, spendSeries(hourly.rows, hours, HOUR, false, byPolicy, policyName));
    chart("policy-spend-day", days, spendSeries(daily.rows, days, DAY, true, byPolicy, policyName));
  }

  async function outcomes() {
    const data = await api("outcomes?hours=48");
    const xs = steps(48 * HOUR, HOUR), index = new Map(xs.map((x, i) => [x, i]));
    const accepted = xs.map(() => 0), refused = xs.map(() => 0), reasons = new Map();
    data.rows.forEach((r) => {
      const i = index.get(seconds(r.hour));
      if (r.result === "ok") { if (i !== undefined) accepted[i] += r.count; return; }
      if (i !== undefined) refused[i] += r.count;
      reasons.set(r.result, (reasons.get(r.result) || 0) + r.count);
    });
    chart("outcomes", xs, [
      { label: "accepted", values: accepted, color: "#059669" },
      { label: "refused", values: refused, color: "#dc2626" },
    ]);
    table("refusals", ["reason", "count"],
      [...reasons.entries()].sort((a, b) => b[1] - a[1]).map(([code, n]) => [code, { text: n, cls: "num" }]));
  }

  async function deposits() {
    const data = await api("deposits?hours=48");
    const empty = document.getElementById("deposits-empty");
    if (!data.sampled || !data.samples.length) {
      empty.hidden = false;
      empty.textContent = data.sampled ? "no deposit samples in the last 48 hours"
        : "deposits are not sampled on this server (the deposit watcher is off)";
      document.getElementById("deposits").dataset.series = JSON.stringify({ x: [], series: [] });
      return;
    }
    const key = (s) => s.chainId + ":" + s.paymaster;
    const at = (iso) => Date.parse(iso) / 1000;  // samples may be less than a second apart
    const xs = [...new Set(data.samples.map((s) => at(s.at)))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = [];
    [...new Set(data.samples.map(key))].forEach((k) => {
      const values = xs.map(() => null);
      data.samples.filter((s) => key(s) === k).forEach((s) => { values[index.get(at(s.at))] = eth(s.depositWei); });
      const [chain, paymaster] = k.split(":");
      series.push({ label: "chain " + chain + " " + short(paymaster), values: values, extra: { spanGaps: true } });
      const pm = data.paymasters.find((p) => String(p.chainId) === chain && p.paymaster.toLowerCase() === paymaster.toLowerCase());
      if (pm && pm.lowBalanceWei !== null) {
        series.push({ label: "threshold " + short(paymaster), values: xs.map(() => eth(pm.lowBalanceWei)),
          extra: { dash: [6, 4], width: 1 } });
      }
    });
    chart("deposits", xs, series);
  }

  async function signers() {
    const [data, events] = await Promise.all([api("signers"), api("signer-events?hours=48&limit=20")]);
    const status = document.getElementById("signer-status");
    status.textContent = "status: " + data.status + " — signing as " + data.address;
    status.className = data.status === "ok" ? "good" : "bad";
    // failovers per hour, one series per (from → to), summed over every server process
    const xs = steps(48 * HOUR, HOUR), index = new Map(xs.map((x, i) => [x, i]));
    const moves = new Map(), from = new Map();
    events.failovers.forEach((f) => {
      const label = f.backend + " → " + f.toBackend;
      if (!moves.has(label)) moves.set(label, xs.map(() => 0));
      const i = index.get(seconds(f.hour));
      if (i !== undefined) moves.get(label)[i] += f.count;
      from.set(f.backend, (from.get(f.backend) || 0) + f.count);
    });
    chart("signer-failovers", xs, [...moves.entries()].sort().map(([label, values]) => ({ label: label, values: values, bars: true })));
    table("signers", ["backend", "type", "role", "healthy", "circuit", "failovers (48 h)", "checked", "last error"],
      data.backends.map((b) => [b.name, b.type, b.role,
        { text: b.healthy === null ? "?" : b.healthy ? "yes" : "no", cls: b.healthy === false ? "bad" : "good" },
        { text: b.circuit, cls: b.circuit === "closed" ? "" : "bad" }, { text: from.get(b.name) || 0, cls: "num" },
        b.checkedAt ? b.checkedAt.slice(11, 19) : "", b.lastError]));
    table("signer-events", ["time", "event", "backend", "to", "count", "process", "detail"],
      events.events.map((e) => [e.at.replace("T", " ").slice(0, 19),
        { text: e.kind, cls: e.kind === "healthy" || e.kind === "circuit_closed" ? "good" : "bad" },
        e.backend, e.toBackend, { text: e.count, cls: "num" }, e.process, e.detail]));
  }

  async function policies() {
    const data = await api("policies");
    const rows = [];
    // amount limits are wei (shown in ETH): spent is what included operations cost, reserved what
    // signed ones may still cost; request limits count operations
    const shown = (l, v) => (v === undefined ? "" : l.type === "amount" ? eth(v).toFixed(6) : v);
    data.policies.forEach((p) => {
      if (p.perWallet) { rows.push([p.id, p.type, "per wallet", "", "", "", "", ""]); return; }
      (p.limits || []).filter((l) => l.used !== undefined).forEach((l) => {
        rows.push([p.id, p.type, l.type + (l.window ? " / " + l.window + " s" : ""),
          { text: shown(l, l.used), cls: "num" }, { text: shown(l, l.spent), cls: "num" },
          { text: shown(l, l.reserved), cls: "num" }, { text: shown(l, l.limit), cls: "num" }, l.resetsAt]);
      });
    });
    table("policies", ["policy", "type", "limit", "used", "spent", "reserved", "of", "resets"], rows);
  }

  async function operations() {
    const data = await api("operations?limit=50");
    table("operations", ["time", "chain", "sender", "method", "status", "max cost (ETH)", "actual (ETH)", "tx"],
      data.operations.map((o) => [o.createdAt.replace("T", " ").slice(0, 19), o.chainId, short(o.sender), o.method,
        { text: o.status + (o.success === false ? " (reverted)" : ""), cls: o.success === false ? "bad" : "" },
        { text: eth(o.maxGasCostWei).toFixed(6), cls: "num" },
        { text: o.actualGasCostWei === null ? "" : eth(o.actualGasCostWei).toFixed(6), cls: "num" }, short(o.txHash)]));
  }

  async function follower() {
    const data = await api("follower");
    const status = document.getElementById("follower-status");
    status.textContent = data.enabled ? "on" : "off: actual spend is not recorded (watch.enabled)";
    status.className = data.enabled ? "good" : "bad";
    table("follower", ["chain", "last block", "head", "behind", "updated"],
      data.chains.map((c) => [c.chainId, { text: c.lastBlock, cls: "num" }, { text: c.head, cls: "num" },
        { text: c.behind === null ? "node down" : c.behind, cls: c.behind === null || c.behind > 10 ? "num bad" : "num" },
        c.updatedAt.replace("T", " ").slice(0, 19)]));
    table("unknown", ["seen", "chain", "sender", "paymaster", "actual (ETH)", "tx"],
      data.unknown.map((u) => [u.seenAt.replace("T", " ").slice(0, 19), u.chainId, short(u.sender), short(u.paymaster),
        { text: eth(u.actualGasCostWei).toFixed(6), cls: "num bad" }, short(u.txHash)]));
  }

  async function load() {
    const main = document.getElementById("dashboard");
    const results = await Promise.allSettled([spend(), policySpend(), outcomes(), deposits(), follower(), signers(), policies(), operations()]);
    const failed = results.filter((r) => r.status === "rejected");
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    main.dataset.state = failed.length ? "error" : "ready";
    if (failed.length) main.dataset.error = failed.map((r) => String(r.reason)).join("; ");
  }

  document.addEventListener("DOMContentLoaded", load);
})();
