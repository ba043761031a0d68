// Allmende explorer: plain JavaScript, no library, no external requests.
// Reads /explorer/api/* and the gateway's own /v1 API; every value is put into the page
// as text (never as HTML): endpoints, licenses and descriptions come from the chain.
"use strict";

const POLL_MS = 3000;
const VIEWS = ["network", "models", "money", "trust", "data", "playground"];
let units = { usd: { symbol: "dUSD", decimals: 6 }, alm: { symbol: "ALM", decimals: 18 } };
let current = "network";
let timer = null;

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector(`#${tableId} tbody`);
  const cols = document.querySelectorAll(`#${tableId} thead th`).length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "empty" }, empty))]));
}

function cards(id, pairs) {
  document.getElementById(id).replaceChildren(
    ...pairs.map(([k, v]) => el("div", { class: "card" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v)))
  );
}

const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
const short = (s) => (s && s.length > 14 ? `${s.slice(0, 8)}…${s.slice(-4)}` : s || "–");
const addr = (s) => el("code", { title: s }, short(s));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const num = (content) => el("td", { class: "num" }, content);

function amount(base, unit) {
  // exact: integer base units → decimal string (BigInt, no floats)
  const u = units[unit];
  let v = BigInt(base || "0");
  const neg = v < 0n;
  if (neg) v = -v;
  const scale = 10n ** BigInt(u.decimals);
  const whole = v / scale;
  let frac = (v % scale).toString().padStart(u.decimals, "0").replace(/0+$/, "");
  if (frac.length > 6) frac = frac.slice(0, 6);
  return `${neg ? "-" : ""}${whole.toLocaleString("en")}${frac ? "." + frac : ""} ${u.symbol}`;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}` }, text);
}

// ------------------------------------------------------------------ charts

function lineChart(id, series, labels) {
  // series: [[{t, v}], ...]; simple SVG polyline per series with a y axis of 3 ticks
  const W = 320, H = 130, L = 34, B = 18;
  const points = series.flat().filter((p) => p.v !== null);
  const max = Math.max(1, ...points.map((p) => p.v));
  const ts = series.flat().map((p) => p.t);
  const t0 = Math.min(...ts), t1 = Math.max(t0 + 1, ...ts);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - 8);
  const parts = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B })];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, fmtShort(max * f)));
  }
  parts.push(svg("text", { x: L, y: H - 4 }, new Date(t0 * 1000).toLocaleTimeString()));
  parts.push(svg("text", { x: W - 2, y: H - 4, "text-anchor": "end" }, "now"));
  series.forEach((s, i) => {
    const pts = s.filter((p) => p.v !== null).map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
    if (pts.length) parts.push(svg("polyline", { class: `s${i}`, points: pts.join(" ") }));
    if (pts.length < 40) {
      for (const p of pts) {
        const [cx, cy] = p.split(",");
        parts.push(svg("circle", { class: `s${i}`, cx, cy, r: 2 }));
      }
    }
    if (labels && labels[i]) parts.push(svg("text", { x: W - 4, y: 10 + 12 * i, "text-anchor": "end", class: `l${i}` }, labels[i]));
  });
  document.getElementById(id).replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, "aria-hidden": "true" }, parts));
}

function fmtShort(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

function barChart(id, bars) {
  // bars: [{label, value, budget}] → horizontal bars of value against budget
  const W = 320, row = 22, H = Math.max(1, bars.length) * row + 6, L = 70;
  const parts = [];
  if (!bars.length) parts.push(svg("text", { x: 4, y: 16 }, "no grants yet"));
  bars.forEach((b, i) => {
    const y0 = 4 + i * row;
    const frac = b.budget > 0 ? Math.min(1, b.value / b.budget) : 0;
    parts.push(svg("text", { x: 0, y: y0 + 13 }, b.label));
    parts.push(svg("rect", { class: "b1", x: L, y: y0, width: W - L - 80, height: row - 6, "data-grant": b.id }));
    parts.push(svg("rect", { class: "b0", x: L, y: y0, width: (W - L - 80) * frac, height: row - 6, "data-grant": b.id }));
    parts.push(svg("text", { x: W - 76, y: y0 + 13 }, `${b.value.toFixed(2)} / ${b.budget.toFixed(2)}`));
  });
  document.getElementById(id).replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W * 1.5, "aria-hidden": "true" }, parts));
}

function lineageGraph(models, edges) {
  // layered layout: a model's depth is 1 + the deepest of its parents
  const byId = new Map(models.map((m) => [m.model_id, m]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const parents = (byId.get(id) || { parents: [] }).parents;
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depthOf(p, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  models.forEach((m) => depthOf(m.model_id));
  const layers = [];
  models.forEach((m) => (layers[depth.get(m.model_id)] ||= []).push(m));
  const NW = 150, NH = 34, GX = 40, GY = 14;
  const pos = new Map();
  layers.forEach((layer, d) => layer.forEach((m, i) => pos.set(m.model_id, { x: 4 + d * (NW + GX), y: 4 + i * (NH + GY) })));
  const W = Math.max(320, layers.length * (NW + GX)), H = Math.max(60, ...layers.map((l) => l.length * (NH + GY) + 8));
  const parts = [];
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    parts.push(svg("path", { class: "edge", d: `M${a.x + NW},${a.y + NH / 2} C${a.x + NW + GX / 2},${a.y + NH / 2} ${b.x - GX / 2},${b.y + NH / 2} ${b.x},${b.y + NH / 2}` }));
  }
  for (const m of models) {
    const p = pos.get(m.model_id);
    parts.push(svg("g", { class: "node", transform: `translate(${p.x},${p.y})` },
      svg("title", {}, `${m.name || m.model_id}\n${m.license}\nowner ${m.owner}`),
      svg("rect", { width: NW, height: NH, rx: 5 }),
      svg("text", { x: 8, y: 14 }, clip(m.name || short(m.model_id), 22)),
      svg("text", { x: 8, y: 27 }, `${clip(m.license, 14)} · ${(m.royalty_bps / 100).toFixed(2)} %`)));
  }
  if (!models.length) parts.push(svg("text", { x: 4, y: 16 }, "no models registered"));
  document.getElementById("lineage").replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, "aria-hidden": "true" }, parts));
}

// ------------------------------------------------------------------ views

function authHeaders() {
  // a gateway with API keys: the playground's key also shows this key's own receipts
  const key = sessionStorage.getItem("allmende-api-key");
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function api(path) {
  const reply = await fetch(path, { headers: { accept: "application/json", ...authHeaders() } });
  const body = await reply.json();
  if (!reply.ok) throw new Error((body.error && body.error.message) || `${path}: HTTP ${reply.status}`);
  if (body.units) units = body.units;
  return body;
}

const healthKind = { healthy: "good", suspended: "warn", paused: "bad", inactive: "muted", unreachable: "bad" };

async function showNetwork() {
  const [net, act] = await Promise.all([api("/explorer/api/network"), api("/explorer/api/activity")]);
  const t = net.totals;
  cards("network-totals", [
    ["Providers (serving)", `${t.providers} (${t.providers_serving})`],
    ["Validators", t.validators],
    ["Provider stake", amount(t.provider_stake, "alm")],
    ["Validator stake", amount(t.validator_stake, "alm")],
    ["Models served / registered", `${t.models_served} / ${t.models_registered}`],
    ["Open fraud cases", t.open_cases],
    ["Requests via this gateway", act.totals.requests],
    ["Tokens via this gateway", act.totals.tokens],
  ]);
  fill("providers-table", net.providers.map((p) => el("tr", { "data-address": p.address },
    el("td", {}, addr(p.address)),
    el("td", {}, el("code", {}, p.endpoint), " ", badge(p.connection, "muted")),
    el("td", {}, p.offers.map((o) => el("div", {}, el("strong", {}, o.name || short(o.model_id)), ` ${amount(o.price_in_per_1m, "usd")} / ${amount(o.price_out_per_1m, "usd")}`, o.latency_ms !== null ? ` · ${o.latency_ms} ms` : ""))),
    num(amount(p.stake, "alm")),
    num(`${(p.reputation.value * 100).toFixed(1)} %${p.reputation.scores.length ? "" : " (no scores)"}`),
    el("td", {}, badge(p.health, healthKind[p.health] || "muted"), p.cases ? [" ", badge(`${p.cases} case${p.cases > 1 ? "s" : ""}`, "bad")] : null),
    num(amount(p.earnings, "usd")),
  )), "no providers registered");
  fill("validators-table", net.validators.map((v) => el("tr", {},
    el("td", {}, addr(v.address)), el("td", {}, el("code", {}, v.endpoint)), num(amount(v.stake, "alm")),
    el("td", {}, v.active ? badge("active", "good") : badge("inactive", "muted")), num(v.cases_reported),
  )), "no validators registered");
  const perMin = 60 / act.bucket_s;
  const s = act.series;
  lineChart("chart-requests", [s.map((b) => ({ t: b.t, v: b.requests * perMin }))]);
  lineChart("chart-tokens", [s.map((b) => ({ t: b.t, v: b.tokens * perMin }))]);
  lineChart("chart-latency", [s.map((b) => ({ t: b.t, v: b.p50_ms })), s.map((b) => ({ t: b.t, v: b.p95_ms }))], ["p50", "p95"]);
}

async function showModels() {
  const m = await api("/explorer/api/models");
  const names = new Map(m.models.map((x) => [x.model_id, x.name || short(x.model_id)]));
  fill("models-table", m.models.map((x) => el("tr", {},
    el("td", {}, x.name || "(not served)", x.parents.length ? el("div", { class: "mono" }, "from ", x.parents.map((p) => names.get(p) || short(p)).join(", ")) : null),
    el("td", {}, addr(x.model_id)), el("td", {}, addr(x.owner)), el("td", {}, x.license),
    num(`${(x.royalty_bps / 100).toFixed(2)} %${x.royalty_payee !== x.owner && x.royalty_payee_bps ? " → " + short(x.royalty_payee) : ""}`),
    num(x.providers),
    el("td", {}, x.attestations.length ? x.attestations.map((a) => el("div", {}, `${a.metric} = ${(a.value_ppm / 1e6).toFixed(4)} by `, addr(a.validator))) : "–"),
  )), "no models registered");
  lineageGraph(m.models, m.lineage);
}

async function showMoney() {
  const m = await api("/explorer/api/money");
  const t = m.totals;
  cards("money-totals", [
    ["Deposits in channels", amount(t.deposits, "usd")],
    ["Redeemed by providers", amount(t.redeemed, "usd")],
    ["Pending (owed, not redeemed)", amount(t.pending, "usd")],
    ["Royalties paid", amount(t.royalties_paid, "usd")],
    ["Protocol fees paid", amount(t.protocol_fees_paid, "usd")],
    ["Treasury fees accrued", amount(m.treasury.accrued_fees, "usd")],
    ["Treasury", short(m.treasury.address)],
    ["Timelock ALM", amount(m.treasury.timelock_alm, "alm")],
  ]);
  fill("channels-table", m.channels.map((c) => el("tr", {},
    el("td", {}, addr(c.channel_id)), el("td", {}, addr(c.payer), c.this_gateway ? [" ", badge("this gateway", "muted")] : null),
    el("td", {}, addr(c.provider)), num(amount(c.deposit, "usd")), num(amount(c.redeemed, "usd")),
    num(c.pending === null ? "–" : amount(c.pending, "usd")), el("td", {}, c.closes_at ? when(c.closes_at) : "open"),
  )), "no channels yet");
  fill("royalties-table", m.royalties.map((r) => el("tr", {},
    el("td", {}, addr(r.model_id)), el("td", {}, addr(r.payee)), num(amount(r.royalties, "usd")),
  )), "nothing redeemed yet");
}

const caseKind = { open: "warn", guilty: "bad", "not guilty": "good", "no quorum": "muted" };

async function showTrust() {
  const t = await api("/explorer/api/trust");
  fill("cases-table", [...t.cases].reverse().map((c) => el("tr", { "data-case": c.case_id, "data-state": c.state },
    num(`#${c.case_id}`), el("td", {}, addr(c.provider)), el("td", {}, addr(c.reporter)),
    el("td", {}, badge(c.verdict ? `verdict: ${c.verdict}` : "open", caseKind[c.state] || "muted")),
    el("td", {}, `${amount(c.guilty_weight, "alm")} / ${amount(c.innocent_weight, "alm")}`,
      c.votes.map((v) => el("div", { class: "mono" }, short(v.validator), v.guilty ? " guilty" : " not guilty"))),
    num(amount(c.slashed, "alm")), el("td", {}, when(c.deadline)),
  )), "no fraud cases");
  fill("proposals-table", t.proposals.map((p) => el("tr", {},
    el("td", {}, addr(p.proposal_id)),
    el("td", {}, p.description, (p.calls || []).map((c) => el("div", { class: "mono" }, `→ ${c}`))),
    el("td", {}, badge(p.state, "muted")),
    el("td", {}, `${amount(p.for, "alm")} / ${amount(p.against, "alm")} / ${amount(p.abstain, "alm")} (${p.voters} voters)`),
    num(amount(p.quorum, "alm")),
    el("td", {}, p.timelock, p.eta && p.timelock === "waiting" ? ` until ${when(p.eta)}` : ""),
  )), "no proposals");
}

async function showData() {
  const d = await api("/explorer/api/data");
  const eps = (ppm) => Number(BigInt(ppm)) / 1e6;
  fill("datasets-table", d.datasets.map((x) => el("tr", {},
    el("td", {}, addr(x.dataset_id)), el("td", {}, addr(x.owner)), el("td", {}, addr(x.vault)), el("td", {}, x.license), num(x.accesses),
  )), "no datasets registered");
  fill("grants-table", d.grants.map((g) => el("tr", { "data-grant": g.grant_id },
    num(`#${g.grant_id}`), el("td", {}, addr(g.dataset_id)), el("td", {}, addr(g.grantee)), el("td", {}, g.template),
    num(`${eps(g.epsilon_spent_ppm).toFixed(3)} / ${eps(g.epsilon_budget_ppm).toFixed(3)}`), el("td", {}, when(g.expires_at)),
    el("td", {}, g.revoked ? badge("revoked", "bad") : g.expired ? badge("expired", "muted") : badge("active", "good")),
  )), "no grants");
  barChart("chart-epsilon", d.grants.map((g) => ({ id: g.grant_id, label: `grant #${g.grant_id}`, value: eps(g.epsilon_spent_ppm), budget: eps(g.epsilon_budget_ppm) })));
  fill("log-table", d.access_log.map((a) => el("tr", {},
    el("td", {}, when(a.at)), el("td", {}, addr(a.dataset_id)), num(`#${a.grant_id}`), el("td", {}, addr(a.job_id)), el("td", {}, addr(a.model_id)), num(eps(a.epsilon_ppm).toFixed(3)),
  )), "no accesses logged");
}

async function showPlayground() {
  const [models, act] = await Promise.all([api("/v1/models"), api("/explorer/api/activity")]);
  const select = document.getElementById("chat-model");
  const chat = models.data.filter((m) => m.allmende.kind !== "embed").map((m) => m.id);
  const have = [...select.options].map((o) => o.value);
  if (chat.join("\n") !== have.join("\n")) {
    const keep = select.value;
    select.replaceChildren(...chat.map((id) => el("option", { value: id }, id)));
    if (chat.includes(keep)) select.value = keep;
  }
  fill("recent-table", act.receipts.map((r) => el("tr", {},
    el("td", {}, r.model || short(r.model_id)), el("td", {}, addr(r.provider)), num(`${r.tokens_in} / ${r.tokens_out}`),
    num(amount(r.amount, "usd")), num(`${r.latency_ms} ms`),
  )), "no answers yet");
}

const SHOW = { network: showNetwork, models: showModels, money: showMoney, trust: showTrust, data: showData, playground: showPlayground };

async function refresh() {
  const status = document.getElementById("status");
  try {
    await SHOW[current]();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove("error");
    document.body.dataset.loaded = current;
  } catch (err) {
    status.textContent = `could not update: ${err.message}`;
    status.classList.add("error");
  }
}

function select(view) {
  if (!VIEWS.includes(view)) view = "network";
  current = view;
  for (const v of VIEWS) {
    document.getElementById(v).hidden = v !== view;
    document.getElementById(`tab-${v}`).setAttribute("aria-selected", String(v === view));
  }
  delete document.body.dataset.loaded;
  window.scrollTo(0, 0);
  clearTimeout(timer);
  const loop = async () => {
    await refresh();
    timer = setTimeout(loop, POLL_MS);
  };
  loop();
}

// ------------------------------------------------------------------ playground chat

function showReceipt(r) {
  const rows = [
    ["Provider", el("code", {}, r.provider)],
    ["Model", `${r.model || ""} (${short(r.model_id)})`],
    ["Tokens", `${r.tokens_in} in, ${r.tokens_out} out`],
    ["Price", `${amount(r.price_in_per_1m, "usd")} in / ${amount(r.price_out_per_1m, "usd")} out per 1M tokens`],
    ["Paid", amount(r.amount, "usd")],
    ["Latency", `${r.latency_ms} ms`],
    ["Signature", r.checks.signature],
    ["Price check", r.checks.price],
    ["Proof", r.checks.proof],
    ["Audited", r.audited ? "yes" : `not this answer; the provider's audit reputation is ${r.provider_reputation === null ? "–" : (r.provider_reputation * 100).toFixed(1) + " %"}`],
    ["Request id", el("code", {}, r.request_id)],
  ];
  const dl = document.getElementById("receipt");
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  dl.dataset.provider = r.provider;
  dl.dataset.responseId = r.id;
}

async function sendChat(event) {
  event.preventDefault();
  const button = document.getElementById("chat-send");
  const out = document.getElementById("chat-answer");
  const receipt = document.getElementById("receipt");
  out.textContent = "";
  out.classList.remove("error");
  delete out.dataset.done;
  receipt.replaceChildren();
  button.disabled = true;
  const body = {
    model: document.getElementById("chat-model").value,
    messages: [{ role: "user", content: document.getElementById("chat-input").value }],
    max_tokens: Number(document.getElementById("chat-max").value) || 128,
    temperature: Number(document.getElementById("chat-temperature").value || 0.2),
    stream: true,
    stream_options: { include_usage: true },
  };
  try {
    const headers = { "content-type": "application/json", ...authHeaders() };
    const reply = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    if (!reply.ok) {
      const err = await reply.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${reply.status}`);
    }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let deltas = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        const choice = msg.choices && msg.choices[0];
        if (choice && choice.delta && choice.delta.content) {
          out.append(choice.delta.content);
          out.dataset.deltas = String(++deltas);
        }
        if (msg.allmende) showReceipt(msg.allmende);
      }
    }
    out.dataset.done = "true";
  } catch (err) {
    out.classList.add("error");
    out.textContent = `error: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

window.addEventListener("hashchange", () => select(location.hash.slice(1)));
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("chat-form").addEventListener("submit", sendChat);
  const key = document.getElementById("chat-key");
  key.value = sessionStorage.getItem("allmende-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("allmende-api-key", key.value.trim()));
  select(location.hash.slice(1) || "network");
});
