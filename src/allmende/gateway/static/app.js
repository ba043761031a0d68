// Allmende explorer: plain JavaScript, no library, no external requests.
// Reads /explorer/api/* and the gateway's own /v1 API; every value is put into the page
// as text (never as HTML): endpoints, licenses and descriptions come from the chain.
"use strict";

const POLL_MS = 3000;
const VIEWS = ["network", "models", "money", "trust", "data", "address", "playground"];
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
let units = { usd: { symbol: "dUSD", decimals: 6 }, alm: { symbol: "ALM", decimals: 18 } };
let current = "network";
let shownAddress = null; // the address the address view shows
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
// an address links to its page; other ids (channels, models, cases) are shown as code
const addr = (s) => (s && ADDRESS.test(s) ? el("a", { class: "addr", href: `#address/${s}`, title: s }, el("code", {}, short(s))) : el("code", { title: s }, short(s)));
const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const num = (...content) => el("td", { class: "num" }, ...content);

const PLACES = { usd: 6, alm: 2 }; // every amount of a unit with the same decimals, so columns line up

function amount(base, unit) {
  // exact: integer base units → decimal string (BigInt, no floats), cut (never rounded up) to PLACES
  const u = units[unit];
  let v = BigInt(base || "0");
  const neg = v < 0n;
  if (neg) v = -v;
  const scale = 10n ** BigInt(u.decimals);
  const whole = v / scale;
  const places = Math.min(PLACES[unit] ?? 6, u.decimals);
  const frac = (v % scale).toString().padStart(u.decimals, "0").slice(0, places);
  return `${neg ? "-" : ""}${whole.toLocaleString("en")}${places ? "." + frac : ""} ${u.symbol}`;
}

const asNumber = (base, unit) => Number(BigInt(base || "0")) / 10 ** units[unit].decimals; // for plotting only

function reputation(rep) {
  // a share of audits passed, weighted by the validators' stake; no scores = not audited yet (not 50 %)
  if (!rep || !rep.scores.length) return badge("not audited yet", "muted");
  const pct = (rep.value * 100).toFixed(1);
  const n = rep.scores.length;
  return el("span", { title: `consensus of ${n} validator score${n > 1 ? "s" : ""}` }, `${pct} % of audits passed`, el("div", { class: "mono" }, `${n} validator${n > 1 ? "s" : ""}`));
}

function copyButton(text, label) {
  const button = el("button", { type: "button", class: "copy" }, label || "Copy");
  button.addEventListener("click", () => copyText(text, button));
  return button;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // no clipboard permission (e.g. plain http): select a hidden copy, as browsers allow on a click
    const area = el("textarea", { class: "offscreen", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.dataset.copied = "true";
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  }
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}` }, text);
}

// ------------------------------------------------------------------ charts

function lineChart(id, series, labels, format) {
  // series: [[{t, v}], ...]; one SVG line per series, broken where a value is missing (an idle
  // stretch is not drawn as a line across it); a y axis of 3 ticks in `format`
  const fmt = format || fmtShort;
  const W = document.getElementById(id).classList.contains("wide-chart") ? 640 : 320, H = 130, L = 44, B = 18;
  const points = series.flat().filter((p) => p.v !== null);
  let max = Math.max(0, ...points.map((p) => p.v));
  if (!(max > 0)) max = 1; // an empty or all-zero chart still has an axis
  const ts = series.flat().map((p) => p.t);
  const t0 = Math.min(...ts), t1 = Math.max(t0 + 1, ...ts);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - 8);
  const parts = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B })];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, fmt(max * f)));
  }
  if (ts.length) {
    parts.push(svg("text", { x: L, y: H - 4 }, new Date(t0 * 1000).toLocaleTimeString()));
    parts.push(svg("text", { x: W - 2, y: H - 4, "text-anchor": "end" }, new Date(t1 * 1000).toLocaleTimeString()));
  } else {
    parts.push(svg("text", { x: L + 4, y: H / 2 }, "nothing yet"));
  }
  series.forEach((s, i) => {
    const runs = [[]];
    for (const p of s) {
      if (p.v === null) { if (runs[runs.length - 1].length) runs.push([]); continue; }
      runs[runs.length - 1].push(`${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
    }
    for (const run of runs) {
      if (run.length > 1) parts.push(svg("polyline", { class: `s${i % 4} line`, points: run.join(" ") }));
      if (run.length === 1 || s.length < 40) {
        for (const pt of run) {
          const [cx, cy] = pt.split(",");
          parts.push(svg("circle", { class: `s${i % 4}`, cx, cy, r: 2 }));
        }
      }
    }
    if (labels && labels[i]) parts.push(svg("text", { x: W - 4, y: 10 + 12 * i, "text-anchor": "end", class: `l${i % 4}` }, labels[i]));
  });
  document.getElementById(id).replaceChildren(svg("svg", { viewBox: `0 0 ${W} ${H}`, "aria-hidden": "true" }, parts));
}

function fmtShort(v) {
  // counts: 1.5k, 2.0M
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

const fmtMs = (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(0)} ms`);
const fmtUsd = (v) => (v >= 1 || v === 0 ? v.toLocaleString("en", { maximumFractionDigits: 2, minimumFractionDigits: 2 }) : v.toPrecision(2));

function uptimeBars(up) {
  // one bar per minute of the last hour: green serving, amber partly, red not, grey not looked at
  const history = (up && up.history) || [];
  const W = 120, H = 14, w = W / Math.max(1, history.length);
  const bars = history.map((h, i) => svg("rect", { x: (i * w).toFixed(2), y: 0, width: Math.max(0.5, w - 0.4).toFixed(2), height: H,
    class: h === null ? "none" : h >= 0.999 ? "up" : h <= 0.001 ? "down" : "part" }));
  const share = up && up.uptime !== null ? `${(up.uptime * 100).toFixed(1)} %` : "not seen yet";
  return el("div", { class: "uptime", title: `uptime seen by this gateway: ${share}` },
    svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" }, bars), share);
}

function earningsChart(id, byProvider, now) {
  // cumulative provider share per provider, in dUSD: from 0 before its first redeem, a step at
  // each redeem, level until the chain's time now
  const entries = Object.entries(byProvider || {});
  const series = entries.map(([, pts]) => {
    const line = pts.map((p) => ({ t: p.t, v: asNumber(p.earned, "usd") }));
    if (line.length) line.unshift({ t: line[0].t, v: 0 });
    if (line.length && now > line[line.length - 1].t) line.push({ t: now, v: line[line.length - 1].v });
    return line;
  });
  lineChart(id, series, entries.map(([a]) => short(a)), fmtUsd);
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
  if (body.chain_head) showHead(body.chain_head);
  return body;
}

const healthKind = { healthy: "good", suspended: "warn", paused: "bad", inactive: "muted", unreachable: "bad", stopped: "muted" };

function showHead(h) {
  const line = document.getElementById("chain-head");
  line.textContent = `block ${int(h.block)} · ${new Date(h.time * 1000).toLocaleString()} · chain ${h.chain_id}`;
  line.dataset.block = String(h.block);
}

async function showNetwork() {
  const [net, act] = await Promise.all([api("/explorer/api/network"), api("/explorer/api/activity")]);
  const t = net.totals;
  cards("network-totals", [
    ["Chain height", `block ${int(net.chain.block)}`],
    ["Providers (serving)", `${int(t.providers)} (${int(t.providers_serving)})`],
    ["Validators", int(t.validators)],
    ["Provider stake", amount(t.provider_stake, "alm")],
    ["Validator stake", amount(t.validator_stake, "alm")],
    ["Models served / registered", `${int(t.models_served)} / ${int(t.models_registered)}`],
    ["Open fraud cases", int(t.open_cases)],
    ["Requests via this gateway", int(act.totals.requests)],
    ["Tokens via this gateway", int(act.totals.tokens)],
  ]);
  fill("providers-table", net.providers.map((p) => el("tr", { "data-address": p.address, "data-health": p.health },
    el("td", {}, addr(p.address)),
    el("td", {}, badge(p.health, healthKind[p.health] || "muted"), p.cases ? [" ", badge(`${p.cases} case${p.cases > 1 ? "s" : ""}`, "bad")] : null),
    el("td", { class: "reputation" }, reputation(p.reputation)),
    num(amount(p.stake, "alm")),
    num(el("span", {}, amount(p.earnings, "usd")), BigInt(p.pending || "0") > 0n ? el("div", { class: "mono" }, `+ ${amount(p.pending, "usd")} pending`) : null),
    num(p.throughput.tokens_per_s === null ? "–" : `${p.throughput.tokens_per_s.toLocaleString("en")} tok/s`, el("div", { class: "mono" }, `${int(p.throughput.requests)} answers`)),
    num(p.capacity && p.capacity.max_in_flight ? `${int(p.capacity.in_flight)} / ${int(p.capacity.max_in_flight)} busy` : "–"),
    el("td", { class: "uptime-cell" }, uptimeBars(p.uptime)),
    el("td", {}, p.version ? el("code", {}, p.version) : "–"),
    el("td", {}, p.offers.map((o) => el("div", {}, el("strong", {}, o.name || short(o.model_id)), ` ${amount(o.price_in_per_1m, "usd")} / ${amount(o.price_out_per_1m, "usd")}`, o.latency_ms !== null ? ` · ${fmtMs(o.latency_ms)}` : ""))),
    el("td", {}, el("code", {}, p.endpoint || "–"), " ", badge(p.connection, "muted")),
  )), "no providers registered");
  fill("validators-table", net.validators.map((v) => el("tr", {},
    el("td", {}, addr(v.address)), el("td", {}, el("code", {}, v.endpoint || "–")), num(amount(v.stake, "alm")),
    el("td", {}, v.active ? badge("active", "good") : badge("inactive", "muted")), num(int(v.cases_reported)),
  )), "no validators registered");
  const perMin = 60 / act.bucket_s;
  const s = act.series;
  lineChart("chart-requests", [s.map((b) => ({ t: b.t, v: b.requests * perMin }))]);
  lineChart("chart-tokens", [s.map((b) => ({ t: b.t, v: b.tokens * perMin }))]);
  lineChart("chart-latency", [s.map((b) => ({ t: b.t, v: b.p50_ms })), s.map((b) => ({ t: b.t, v: b.p95_ms }))], ["p50", "p95"], fmtMs);
}

async function showModels() {
  const m = await api("/explorer/api/models");
  const names = new Map(m.models.map((x) => [x.model_id, x.name || short(x.model_id)]));
  fill("models-table", m.models.map((x) => el("tr", {},
    el("td", {}, x.name || "(not served)", x.parents.length ? el("div", { class: "mono" }, "from ", x.parents.map((p) => names.get(p) || short(p)).join(", ")) : null),
    el("td", {}, x.kind || "–"),
    num(x.context_length ? `${int(x.context_length)} tokens` : "–"),
    num(x.min_price_in_per_1m === null ? "not served" : `${amount(x.min_price_in_per_1m, "usd")} / ${amount(x.min_price_out_per_1m, "usd")}`),
    el("td", {}, addr(x.model_id)), el("td", {}, addr(x.owner)), el("td", {}, x.license),
    num(`${(x.royalty_bps / 100).toFixed(2)} %${x.royalty_payee !== x.owner && x.royalty_payee_bps ? " → " + short(x.royalty_payee) : ""}`),
    num(int(x.providers)),
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
  earningsChart("chart-earnings", m.earned_over_time, m.chain_time);
}

async function showAddress() {
  if (!shownAddress) throw new Error("give an address (0x followed by 40 hex digits) in the search box");
  const a = await api(`/explorer/api/address/${shownAddress}`);
  document.getElementById("address-value").textContent = a.address;
  document.getElementById("address-copy").dataset.text = a.address;
  const role = [badge(a.role, a.role === "none" ? "muted" : "good")];
  if (a.role !== "none") role.push(" ", a.active ? badge("active", "good") : badge(a.paused ? "paused" : "not active", "muted"));
  if (a.treasury) role.push(" ", badge("treasury", "warn"));
  document.getElementById("address-role").replaceChildren(...role);
  document.getElementById("address-title").textContent = `Address ${short(a.address)}`;
  cards("address-cards", [
    ["Stake", amount(a.stake, "alm")],
    ["Unbonding", `${amount(a.unbonding, "alm")}${a.unbond_at ? " from " + when(a.unbond_at) : ""}`],
    ["Withdrawable earnings", amount(a.withdrawable, "usd")],
    ["Pending (owed by this gateway)", amount(a.pending, "usd")],
    ["ALM balance", amount(a.balances.alm, "alm")],
    ["dUSD balance", amount(a.balances.usd, "usd")],
    ["ETH for gas", `${(asNumber(a.balances.eth, "alm")).toLocaleString("en", { maximumFractionDigits: 4, minimumFractionDigits: 4 })} ETH`],
    ["Validator rewards", amount(a.rewards, "alm")],
  ]);
  earningsChart("chart-address-earnings", a.earned_over_time.length ? { [a.address]: a.earned_over_time } : {}, a.chain_time);
  fill("address-offers-table", a.offers.map((o) => el("tr", {},
    el("td", {}, o.name || short(o.model_id)), num(`${amount(o.price_in_per_1m, "usd")} / ${amount(o.price_out_per_1m, "usd")}`),
  )), "no offers");
  fill("address-channels-table", a.channels.map((c) => el("tr", {},
    el("td", {}, addr(c.channel_id)), el("td", {}, c.as), el("td", {}, addr(c.payer)), el("td", {}, addr(c.provider)),
    num(amount(c.deposit, "usd")), num(amount(c.redeemed, "usd")), el("td", {}, c.closes_at ? when(c.closes_at) : "open"),
  )), "no channels");
  fill("address-cases-table", a.cases.map((c) => el("tr", {},
    num(`#${c.case_id}`), el("td", {}, addr(c.provider)), el("td", {}, addr(c.reporter)),
    el("td", {}, badge(c.state, caseKind[c.state] || "muted")), num(amount(c.slashed, "alm")),
  )), "no fraud cases");
  const royalties = new Map(a.royalties.map((r) => [r.model_id, r.royalties]));
  const models = [...new Set([...a.models_owned, ...royalties.keys()])];
  fill("address-models-table", models.map((m) => el("tr", {},
    el("td", {}, addr(m)), num(amount(royalties.get(m) || "0", "usd")),
  )), "no models");
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

const SHOW = { network: showNetwork, models: showModels, money: showMoney, trust: showTrust, data: showData, address: showAddress, playground: showPlayground };

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

function select(hash) {
  // #view, or #address/0x… for one address's page
  let [view, arg] = hash.split("/");
  if (view === "address" && arg && ADDRESS.test(arg)) shownAddress = arg;
  if (!VIEWS.includes(view)) view = "network";
  current = view;
  for (const v of VIEWS) {
    document.getElementById(v).hidden = v !== view;
    const tab = document.getElementById(`tab-${v}`);
    if (tab) tab.setAttribute("aria-selected", String(v === view));
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

let conversation = []; // the turns so far: {role, content}, sent again with every message (multi-turn)
let streaming = null; // the AbortController of the answer being streamed

function markdown(text) {
  // a small, safe subset of Markdown drawn as DOM nodes (never as HTML): fenced code blocks,
  // headings, bullet and numbered lists, paragraphs, `code`, **strong** and *emphasis*
  const root = el("div", { class: "md" });
  const lines = text.split("\n");
  let list = null, para = [];
  const flush = () => {
    if (para.length) root.append(el("p", {}, inline(para.join(" "))));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
    if (fence) {
      flush(); list = null;
      const code = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) code.push(lines[i]);
      const block = el("pre", { "data-lang": fence[1] || null }, el("code", {}, code.join("\n")));
      root.append(el("div", { class: "codeblock" }, block, copyButton(code.join("\n"), "Copy code")));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (heading) { flush(); list = null; root.append(el("h4", {}, inline(heading[2]))); }
    else if (bullet || numbered) {
      flush();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag, {}); root.append(list); }
      list.append(el("li", {}, inline((bullet || numbered)[1])));
    } else if (!line.trim()) { flush(); list = null; }
    else { list = null; para.push(line); }
  }
  flush();
  return root;
}

function inline(text) {
  // `code`, **strong**, *emphasis* (and _emphasis_); everything else stays text
  const out = [];
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*|_[^_\s][^_]*_)/g;
  let last = 0, m;
  while ((m = pattern.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const t = m[0];
    if (t.startsWith("`")) out.push(el("code", {}, t.slice(1, -1)));
    else if (t.startsWith("**")) out.push(el("strong", {}, t.slice(2, -2)));
    else out.push(el("em", {}, t.slice(1, -1)));
    last = m.index + t.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function message(role, content) {
  const node = el("div", { class: `msg ${role}`, "data-role": role }, el("span", { class: "who" }, role));
  if (role === "assistant") node.append(markdown(content));
  else node.append(content);
  return node;
}

function showReceipt(r, tokensPerS) {
  const audited = r.provider_reputation === null || r.provider_reputation === undefined
    ? "not this answer; the provider has not been audited yet"
    : `not this answer; ${(r.provider_reputation * 100).toFixed(1)} % of the provider's audits passed (stake-weighted)`;
  const rows = [
    ["Provider", el("span", {}, addr(r.provider), " ", copyButton(r.provider))],
    ["Model", `${r.model || ""} (${short(r.model_id)})`],
    ["Tokens", `${int(r.tokens_in)} in, ${int(r.tokens_out)} out`],
    ["Speed", tokensPerS ? `${tokensPerS.toFixed(1)} tokens/s while streaming` : "–"],
    ["Price", `${amount(r.price_in_per_1m, "usd")} in / ${amount(r.price_out_per_1m, "usd")} out per 1M tokens`],
    ["Paid", amount(r.amount, "usd")],
    ["Latency", fmtMs(r.latency_ms)],
    ["Signature", r.checks.signature],
    ["Price check", r.checks.price],
    ["Proof", r.checks.proof],
    ["Audited", r.audited ? "yes" : audited],
    ["Request id", el("code", {}, r.request_id)],
  ];
  const dl = document.getElementById("receipt");
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  dl.dataset.provider = r.provider;
  dl.dataset.responseId = r.id;
}

function requestBody(turns) {
  const system = document.getElementById("chat-system").value.trim();
  return {
    model: document.getElementById("chat-model").value,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...turns],
    max_tokens: Number(document.getElementById("chat-max").value) || 128,
    temperature: Number(document.getElementById("chat-temperature").value || 0.2),
    stream: true,
    stream_options: { include_usage: true },
  };
}

function codeFor(kind) {
  // the request the next Send would make (the conversation so far and the message box)
  const next = document.getElementById("chat-input").value;
  const body = requestBody([...conversation, ...(next.trim() ? [{ role: "user", content: next }] : [])]);
  const base = `${location.origin}/v1`;
  const key = sessionStorage.getItem("allmende-api-key") ? "$ALLMENDE_API_KEY" : "unused";
  if (kind === "curl") {
    const json = JSON.stringify({ ...body, stream: false, stream_options: undefined }, null, 2).replaceAll("'", "'\\''");
    return `curl ${base}/chat/completions \\\n  -H 'content-type: application/json' \\\n  -H "authorization: Bearer ${key}" \\\n  -d '${json}'`;
  }
  const messages = JSON.stringify(body.messages, null, 4).replace(/\n/g, "\n    ");
  return [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${base}", api_key="${key === "unused" ? "unused" : "…"}")`,
    "reply = client.chat.completions.create(",
    `    model=${JSON.stringify(body.model)},`,
    `    messages=${messages},`,
    `    max_tokens=${body.max_tokens},`,
    `    temperature=${body.temperature},`,
    ")",
    "print(reply.choices[0].message.content)",
  ].join("\n");
}

function showCode(kind, button) {
  const code = codeFor(kind);
  const pre = document.getElementById("chat-code");
  pre.textContent = code;
  pre.hidden = false;
  pre.dataset.kind = kind;
  copyText(code, button);
}

async function sendChat(event) {
  event.preventDefault();
  const button = document.getElementById("chat-send");
  const stop = document.getElementById("chat-stop");
  const input = document.getElementById("chat-input");
  const log = document.getElementById("chat-log");
  const content = input.value;
  if (!content.trim() || streaming) return;
  const previous = document.getElementById("chat-answer");
  if (previous) previous.removeAttribute("id");
  const turns = [...conversation, { role: "user", content }];
  log.append(message("user", content));
  const out = message("assistant", "");
  out.id = "chat-answer";
  log.append(out);
  document.getElementById("receipt").replaceChildren();
  button.disabled = true;
  stop.disabled = false;
  streaming = new AbortController();
  let text = "", deltas = 0, first = null, tokens = 0, receipt = null;
  const draw = () => out.replaceChildren(el("span", { class: "who" }, "assistant"), markdown(text));
  try {
    const headers = { "content-type": "application/json", ...authHeaders() };
    const reply = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(requestBody(turns)), signal: streaming.signal });
    if (!reply.ok) {
      const err = await reply.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${reply.status}`);
    }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
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
          if (first === null) first = performance.now();
          text += choice.delta.content;
          draw();
          out.dataset.deltas = String(++deltas);
        }
        if (msg.usage) tokens = msg.usage.completion_tokens || tokens;
        if (msg.allmende) receipt = msg.allmende;
      }
    }
    const seconds = first === null ? 0 : (performance.now() - first) / 1000;
    if (receipt) showReceipt(receipt, seconds > 0 ? (receipt.tokens_out || tokens) / seconds : null);
    out.dataset.done = "true";
    conversation = [...turns, { role: "assistant", content: text }];
    input.value = "";
  } catch (err) {
    if (err.name === "AbortError") {
      // stopped by the user: keep what arrived (the provider is paid for the tokens it sent)
      out.append(el("div", { class: "stopped" }, "stopped"));
      out.dataset.stopped = "true";
      out.dataset.done = "true";
      conversation = [...turns, { role: "assistant", content: text }];
      input.value = "";
    } else {
      out.classList.add("error");
      out.replaceChildren(el("span", { class: "who" }, "assistant"), `error: ${err.message}`);
      log.removeChild(out.previousSibling); // the question stays in the box to send again
    }
  } finally {
    streaming = null;
    button.disabled = false;
    stop.disabled = true;
  }
}

function newChat() {
  if (streaming) streaming.abort();
  conversation = [];
  document.getElementById("chat-log").replaceChildren();
  document.getElementById("receipt").replaceChildren();
  document.getElementById("chat-code").hidden = true;
}

function search(event) {
  event.preventDefault();
  const value = document.getElementById("search-input").value.trim();
  const status = document.getElementById("status");
  if (!ADDRESS.test(value)) {
    status.textContent = `not an address: ${clip(value, 48)} (0x followed by 40 hex digits)`;
    status.classList.add("error");
    return;
  }
  location.hash = `address/${value}`;
}

window.addEventListener("hashchange", () => select(location.hash.slice(1)));
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("chat-form").addEventListener("submit", sendChat);
  document.getElementById("chat-stop").addEventListener("click", () => streaming && streaming.abort());
  document.getElementById("chat-new").addEventListener("click", newChat);
  document.getElementById("copy-curl").addEventListener("click", (e) => showCode("curl", e.currentTarget));
  document.getElementById("copy-python").addEventListener("click", (e) => showCode("python", e.currentTarget));
  document.getElementById("search-form").addEventListener("submit", search);
  document.getElementById("address-copy").addEventListener("click", (e) => copyText(e.currentTarget.dataset.text || "", e.currentTarget));
  const key = document.getElementById("chat-key");
  key.value = sessionStorage.getItem("allmende-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("allmende-api-key", key.value.trim()));
  select(location.hash.slice(1) || "network");
});
