// The analytics dashboard: sign in through the user service, then read the live stream of
// snapshots (server-sent events over fetch, which can carry the bearer token) and redraw.
"use strict";

// Through the gateway the page is /api/analytics/dashboard and the API is under /api.
const API = location.pathname.replace(/\/analytics\/dashboard\/?$/, "");
const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;

let charts = null;
let stream = null;

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill" + (kind ? " " + kind : "");
}

// The minor units of `currency` (2 for EUR, 0 for JPY).
function digitsOf(currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).resolvedOptions()
      .maximumFractionDigits;
  } catch (_) {
    return 2; // an unknown code
  }
}

function money(minor, currency) {
  const digits = digitsOf(currency);
  const amount = minor / Math.pow(10, digits);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(amount);
  } catch (_) {
    return amount.toFixed(digits) + " " + currency;
  }
}

const count = (n) => new Intl.NumberFormat().format(n);
const percent = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + " %");

async function login(email, password) {
  const r = await fetch(API + "/auth/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  if (!r.ok) {
    const p = await r.json().catch(() => ({}));
    throw new Error(p.detail || "Sign-in failed (" + r.status + ")");
  }
  const tokens = await r.json();
  store.setItem("access", tokens.access_token);
  store.setItem("refresh", tokens.refresh_token);
}

async function refresh() {
  const token = store.getItem("refresh");
  if (!token) return false;
  const r = await fetch(API + "/auth/refresh", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ refresh_token: token }),
  });
  if (!r.ok) return false;
  const tokens = await r.json();
  store.setItem("access", tokens.access_token);
  store.setItem("refresh", tokens.refresh_token);
  return true;
}

function signedOut(message) {
  if (stream) stream.abort();
  stream = null;
  store.removeItem("access");
  store.removeItem("refresh");
  $("board").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("signin-error").textContent = message || "";
  setStatus("Signed out");
}

// Reads `event: snapshot` messages from the live stream until it ends.
async function follow() {
  const controller = new AbortController();
  stream = controller;
  const r = await fetch(API + "/analytics/dashboard/live", {
    headers: { authorization: "Bearer " + store.getItem("access"), accept: "text/event-stream" },
    signal: controller.signal,
  });
  if (r.status === 401 && (await refresh())) return follow();
  if (r.status === 401) return signedOut("Your session ended: sign in again.");
  if (r.status === 403) return signedOut("This account is not an administrator's.");
  if (!r.ok) throw new Error("live stream: " + r.status);
  $("signin").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of message.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "snapshot" && data.length) render(JSON.parse(data.join("\n")));
    }
  }
}

async function live() {
  for (;;) {
    try {
      await follow();
      if (!store.getItem("access")) return;
    } catch (e) {
      if (e.name === "AbortError") return;
      setStatus("Reconnecting…", "down");
    }
    await new Promise((done) => setTimeout(done, 2000));
  }
}

function makeCharts() {
  const width = (id) => Math.max(300, $(id).clientWidth || 600);
  const axes = (label) => [
    { values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(11, 16)) },
    { label },
  ];
  const orders = new uPlot(
    {
      width: width("chart-orders"),
      height: 240,
      scales: { x: { time: true }, revenue: {} },
      series: [
        {},
        { label: "Orders", stroke: "#2f6fed", width: 2, fill: "rgba(47,111,237,0.08)" },
        { label: "Revenue (first currency)", stroke: "#16a37a", width: 2, scale: "revenue" },
      ],
      axes: [
        axes("")[0],
        { label: "orders" },
        { side: 1, scale: "revenue", label: "revenue", grid: { show: false } },
      ],
    },
    [[], [], []],
    $("chart-orders"),
  );
  const ingest = new uPlot(
    {
      width: width("chart-ingest"),
      height: 200,
      scales: { x: { time: true } },
      series: [
        {},
        { label: "Accepted", stroke: "#2f6fed", width: 2, fill: "rgba(47,111,237,0.08)" },
        { label: "Dropped", stroke: "#d9822b", width: 2 },
      ],
      axes: axes("events"),
    },
    [[], [], []],
    $("chart-ingest"),
  );
  return { orders, ingest };
}

function render(s) {
  if (!charts) charts = makeCharts();
  const xs = s.minutes.map((m) => m / 1000);
  const currencies = Object.keys(s.revenue_per_minute);
  const main = currencies[0];
  const revenue = main ? s.revenue_per_minute[main] : s.minutes.map(() => 0);
  const unit = main ? Math.pow(10, digitsOf(main)) : 1;
  charts.orders.setData([xs, s.orders_per_minute, revenue.map((v) => v / unit)]);
  charts.ingest.setData([xs, s.events_per_minute, s.dropped_per_minute]);

  const totals = Object.entries(s.today.revenue);
  $("revenue-today").textContent = totals.length
    ? totals.map(([c, v]) => money(v, c)).join(" · ")
    : money(0, "EUR");
  $("orders-today").textContent = count(s.today.orders_confirmed);
  $("placed-today").textContent = count(s.today.orders_placed);
  $("views-today").textContent = count(s.today.views);
  $("registrations-today").textContent = count(s.today.registrations);
  $("conversion-today").textContent = percent(s.funnel.confirmed_per_view);

  const f = s.funnel;
  const top = Math.max(f.viewed, f.placed, f.confirmed, 1);
  const steps = [
    ["Viewed a product", f.viewed, null],
    ["Placed an order", f.placed, f.placed_per_view],
    ["Order confirmed", f.confirmed, f.confirmed_per_placed],
  ];
  const funnel = $("funnel");
  funnel.replaceChildren(
    ...steps.map(([name, n, rate]) => {
      const step = document.createElement("div");
      step.className = "step";
      const caption = document.createElement("div");
      caption.className = "caption";
      const left = document.createElement("span");
      left.textContent = name;
      const right = document.createElement("span");
      right.textContent = count(n) + (rate === null ? "" : " · " + percent(rate));
      caption.append(left, right);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = ((100 * n) / top).toFixed(1) + "%";
      step.append(caption, bar);
      return step;
    }),
  );

  const body = $("top-products").tBodies[0];
  body.replaceChildren(
    ...s.top_products.map((p) => {
      const tr = document.createElement("tr");
      for (const [text, cls] of [
        [String(p.rank), ""],
        [p.product, ""],
        [count(p.units), "num"],
        [money(p.revenue, p.currency), "num"],
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    }),
  );
  for (const k of ["accepted", "duplicate", "conflict", "late", "bot", "invalid"]) {
    $("ingest-" + k).textContent = count(s.ingest_last_hour[k]);
  }
  setStatus("Live · " + s.generated_at.slice(11, 19) + " UTC", "live");
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("signin-error").textContent = "";
  try {
    await login($("email").value, $("password").value);
    live();
  } catch (err) {
    $("signin-error").textContent = err.message;
  }
});
$("signout").addEventListener("click", () => signedOut());
window.addEventListener("resize", () => {
  if (!charts) return;
  for (const [id, c] of [["chart-orders", charts.orders], ["chart-ingest", charts.ingest]]) {
    c.setSize({ width: Math.max(300, $(id).clientWidth), height: c.height });
  }
});

if (store.getItem("access")) live();
