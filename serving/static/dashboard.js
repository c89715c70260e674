// reco live dashboard: polls dashboard/data once a second and draws canvas time series.
// URLs are relative to the page (/dashboard), so the page also works behind a path prefix.
// Plain JS, no libraries. DOM contract (ids, data attributes) is documented in serving/dashboard.py.
"use strict";

const SPAN_MAX_S = 600;   // the server keeps 10 minutes; so does the page
const SPAN_MIN_S = 60;
const POLL_MS = 1000;
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#f85149", "#39c5cf"];

// panel -> series drawn; axis "r" puts a series on the right-hand scale.
const PANELS = {
  events: { unit: "rate", series: [
    { key: "events_per_s", label: "total" }, { key: "events_per_s_click", label: "click" },
    { key: "events_per_s_rating", label: "rating" }, { key: "events_per_s_comment", label: "comment" },
    { key: "events_per_s_invalid", label: "invalid" }] },
  deadletters: { unit: "rate", series: [{ key: "dead_letters_per_s", label: "dead letters / s" }] },
  feedback: { unit: "seconds", series: [
    { key: "feedback_latency_p50_s", label: "p50" }, { key: "feedback_latency_p99_s", label: "p99" }] },
  model: { unit: "int", series: [
    { key: "model_version", label: "version" },
    { key: "updates_per_s", label: "updates / s", axis: "r", unit: "rate" }] },
  quality: { unit: "ratio", zero: false, drift: true, series: [
    { key: "rmse_recent", label: "RMSE recent" }, { key: "rmse_running", label: "RMSE running" },
    { key: "ndcg_recent", label: "NDCG@10 recent", axis: "r" }, { key: "ndcg_running", label: "NDCG@10 running", axis: "r" },
    { key: "hit_rate_recent", label: "HR@10 recent", axis: "r" }] },
  drift: { unit: "count", series: [
    { key: "drift_total", label: "total" }, { key: "drift_error_total", label: "error" },
    { key: "drift_rating_total", label: "rating" }, { key: "drift_sentiment_total", label: "sentiment" }] },
  latency: { unit: "seconds", series: [
    { key: "request_p50_s", label: "p50" }, { key: "request_p99_s", label: "p99" }] },
  requests: { unit: "rate", series: [{ key: "requests_per_s", label: "requests / s" }] },
};

let points = [];      // oldest first, each a flat object from the server
let lastT = null;     // newest point time seen

function fmt(v, unit) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  const a = Math.abs(v);
  switch (unit) {
    case "seconds":
      if (a < 1) return (v * 1000).toFixed(a < 0.01 ? 2 : a < 0.1 ? 1 : 0) + " ms";
      if (a < 60) return v.toFixed(2) + " s";
      return (v / 60).toFixed(1) + " min";
    case "rate":
      if (a === 0) return "0";
      if (a < 10) return v.toFixed(2);
      return Math.round(v).toLocaleString("en-US");
    case "ratio": return v.toFixed(3);
    case "bool": return v >= 1 ? "yes" : "no";
    case "int": case "count": return Math.round(v).toLocaleString("en-US");
    default: return String(v);
  }
}

function tickFmt(v, unit) {
  if (unit === "seconds") return fmt(v, "seconds");
  const a = Math.abs(v);
  if (a >= 10000) return (v / 1000).toFixed(0) + "k";
  if (a >= 100) return Math.round(v).toString();
  if (unit === "int" || unit === "count") return Math.abs(v - Math.round(v)) < 1e-9 ? Math.round(v).toString() : v.toFixed(1);
  if (a >= 1) return v.toFixed(1);
  return v.toFixed(a === 0 ? 0 : 3);
}

function setReadouts(latest) {
  for (const el of document.querySelectorAll("[id^='val-']")) {
    const key = el.id.slice(4);
    const v = latest ? latest[key] : null;
    const ok = v !== null && v !== undefined && isFinite(v);
    el.dataset.value = ok ? String(v) : "";
    el.textContent = fmt(ok ? v : null, el.dataset.unit);
  }
}

function setSources(sources) {
  const ul = document.getElementById("sources");
  ul.replaceChildren();
  for (const s of sources || []) {
    const li = document.createElement("li");
    li.dataset.source = s.name;
    li.dataset.up = s.up ? "true" : "false";
    li.textContent = s.name;
    li.title = s.url + (s.error ? " — " + s.error : "");
    ul.appendChild(li);
  }
}

function range(values, zero) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (lo === Infinity) return null;
  if (zero) lo = Math.min(0, lo);
  if (hi === lo) { const pad = Math.abs(hi) * 0.1 || 1; hi += pad; if (!zero) lo -= pad; }
  else { const pad = (hi - lo) * 0.08; hi += pad; if (!zero || lo < 0) lo -= pad; }
  return [lo, hi];
}

function drawChart(name, panel, pts) {
  const canvas = document.getElementById("chart-" + name);
  if (!canvas) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";

  const hasRight = panel.series.some(s => s.axis === "r");
  // legend first: it wraps onto as many rows as the width needs, the plot starts below it
  const legend = [];
  let lx = 56, row = 0;
  panel.series.forEach((s, i) => {
    const lw = ctx.measureText(s.label).width + 26;
    if (lx + lw > w && lx > 56) { lx = 56; row++; }
    legend.push([s.label, COLORS[i % COLORS.length], lx, 1 + row * 13]);
    lx += lw;
  });
  const m = { l: 52, r: hasRight ? 52 : 10, t: 18 + row * 13, b: 18 };
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  const zero = panel.zero !== false;
  const vals = { l: [], r: [] };
  let drawn = 0;
  for (const s of panel.series) for (const p of pts) {
    const v = p[s.key];
    if (v !== null && v !== undefined && isFinite(v)) { vals[s.axis === "r" ? "r" : "l"].push(v); drawn++; }
  }
  canvas.dataset.points = String(drawn);

  const now = pts.length ? pts[pts.length - 1].t : Date.now() / 1000;
  const first = pts.length ? pts[0].t : now;
  const span = Math.min(SPAN_MAX_S, Math.max(SPAN_MIN_S, now - first));
  const x = t => m.l + pw * (1 - (now - t) / span);

  // grid + x ticks
  ctx.strokeStyle = "#263140"; ctx.fillStyle = "#7d8a99"; ctx.lineWidth = 1;
  ctx.strokeRect(m.l + 0.5, m.t + 0.5, pw, ph);
  const xstep = span > 300 ? 120 : span > 120 ? 60 : 15;
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let a = 0; a <= span; a += xstep) {
    const xx = x(now - a);
    ctx.beginPath(); ctx.moveTo(xx + 0.5, m.t); ctx.lineTo(xx + 0.5, m.t + ph); ctx.stroke();
    ctx.fillText(a === 0 ? "now" : "-" + (a >= 60 ? (a / 60) + "m" : a + "s"), xx, m.t + ph + 3);
  }

  if (drawn === 0) {
    ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillStyle = "#7d8a99"; ctx.font = "13px system-ui, sans-serif";
    ctx.fillText("no data yet", m.l + pw / 2, m.t + ph / 2);
    drawLegend(ctx, legend);
    return;
  }
  const rl = range(vals.l, zero), rr = range(vals.r, zero);
  const y = (v, r) => m.t + ph * (1 - (v - r[0]) / (r[1] - r[0]));

  // y ticks
  ctx.textBaseline = "middle";
  for (const [r, side] of [[rl, "l"], [rr, "r"]]) {
    if (!r) continue;
    const unit = side === "l" ? panel.unit : (panel.series.find(s => s.axis === "r").unit || panel.unit);
    for (let i = 0; i <= 4; i++) {
      const v = r[0] + (r[1] - r[0]) * i / 4, yy = y(v, r);
      if (side === "l") {
        ctx.strokeStyle = "#263140"; ctx.beginPath(); ctx.moveTo(m.l, yy + 0.5); ctx.lineTo(m.l + pw, yy + 0.5); ctx.stroke();
        ctx.textAlign = "right"; ctx.fillText(tickFmt(v, unit), m.l - 4, yy);
      } else { ctx.textAlign = "left"; ctx.fillText(tickFmt(v, unit), m.l + pw + 4, yy); }
    }
  }

  // drift markers: a point where the detection count went up
  if (panel.drift) {
    ctx.strokeStyle = "#f85149"; ctx.setLineDash([3, 3]);
    for (let i = 1; i < pts.length; i++) {
      const a = pts[i - 1].drift_total, b = pts[i].drift_total;
      if (a !== null && b !== null && a !== undefined && b > a) {
        const xx = x(pts[i].t); ctx.beginPath(); ctx.moveTo(xx, m.t); ctx.lineTo(xx, m.t + ph); ctx.stroke();
      }
    }
    ctx.setLineDash([]);
  }

  // series + legend
  ctx.save(); ctx.beginPath(); ctx.rect(m.l, m.t, pw, ph); ctx.clip();
  panel.series.forEach((s, i) => {
    const r = s.axis === "r" ? rr : rl;
    if (!r) return;
    ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = s.axis === "r" ? 1.2 : 1.8;
    if (s.axis === "r") ctx.setLineDash([5, 3]);
    // runs of consecutive values; a null or missed polls (> 5 s apart) break the line
    const runs = [];
    let run = null, prevT = null;
    for (const p of pts) {
      const v = p[s.key];
      const ok = v !== null && v !== undefined && isFinite(v);
      if (!ok || (prevT !== null && p.t - prevT > 5)) run = null;
      if (ok) { if (!run) { run = []; runs.push(run); } run.push([x(p.t), y(v, r)]); }
      prevT = p.t;
    }
    ctx.fillStyle = ctx.strokeStyle;
    for (const seg of runs) {
      if (seg.length === 1) { ctx.fillRect(seg[0][0] - 1.5, seg[0][1] - 1.5, 3, 3); continue; }
      ctx.beginPath(); ctx.moveTo(seg[0][0], seg[0][1]);
      for (let k = 1; k < seg.length; k++) ctx.lineTo(seg[k][0], seg[k][1]);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  });
  ctx.restore();
  drawLegend(ctx, legend);
}

function drawLegend(ctx, legend) {
  ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.font = "11px system-ui, sans-serif";
  for (const [label, color, lx, ly] of legend) {
    ctx.fillStyle = color; ctx.fillRect(lx, ly + 4, 10, 3);
    ctx.fillStyle = "#d8dee6"; ctx.fillText(label, lx + 13, ly);
  }
}

let feedback = null;  // the latest item feedback summary (doc.feedback) or null

function drawAll() {
  for (const [name, panel] of Object.entries(PANELS)) drawChart(name, panel, points);
  drawSentiment(feedback);
}

function setFb(id, v, text) {
  const el = document.getElementById(id);
  const ok = v !== null && v !== undefined && isFinite(v);
  el.dataset.value = ok ? String(v) : "";
  el.textContent = ok ? text : "—";
}

// the falling list and readouts of the sentiment panel
function renderFeedback(fb) {
  feedback = fb || null;
  setFb("fb-falling", fb ? fb.falling : null, fb ? fmt(fb.falling, "count") : "");
  setFb("fb-commented", fb ? fb.commented : null, fb ? fmt(fb.commented, "count") : "");
  setFb("fb-trend_min", fb ? fb.trend_min : null, fb && fb.trend_min !== null ? fb.trend_min.toFixed(2) : "");
  const ol = document.getElementById("falling-list");
  ol.replaceChildren();
  const top = fb ? fb.top_falling || [] : [];
  for (const it of top) {
    const li = document.createElement("li");
    li.dataset.item = it.item_id;
    li.dataset.trend = String(it.trend);
    const id = document.createElement("span"); id.className = "id"; id.textContent = it.item_id;
    const tr = document.createElement("span"); tr.className = "trend"; tr.textContent = Math.abs(it.trend) < 0.005 ? "0.00" : (it.trend > 0 ? "+" : "") + it.trend.toFixed(2);
    const more = document.createElement("span"); more.className = "more";
    more.textContent = `recent ${fmtNum(it.sentiment_recent)} · mean ${fmtNum(it.sentiment_mean)} · ${it.comments} comments` + (it.falling ? " · falling" : "");
    li.append(id, tr, more);
    ol.appendChild(li);
  }
  ol.dataset.empty = top.length ? "false" : "true";
  ol.dataset.note = !fb ? "no model yet" : fb.falling === 0 && !top.length ? "no item's comments are turning negative" : top.length ? "" : "items hidden: reads need an API key";
}

function fmtNum(v) { return v === null || v === undefined ? "—" : v.toFixed(2); }

// bars: items per mean-sentiment bucket, red (low) to green (high)
function drawSentiment(fb) {
  const canvas = document.getElementById("chart-sentiment");
  if (!canvas) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const counts = fb ? fb.counts || [] : [];
  const total = counts.reduce((a, b) => a + b, 0);
  canvas.dataset.items = String(total);
  const m = { l: 40, r: 10, t: 16, b: 30 };
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  ctx.fillStyle = "#7d8a99"; ctx.textAlign = "left"; ctx.textBaseline = "top";
  ctx.fillText("items by mean comment sentiment", m.l, 1);
  if (!total) {
    ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.font = "13px system-ui, sans-serif";
    ctx.fillText(fb ? "no comments yet" : "no model yet", m.l + pw / 2, m.t + ph / 2);
    return;
  }
  const hi = Math.max(...counts);
  const n = counts.length, bw = pw / n;
  ctx.strokeStyle = "#263140"; ctx.strokeRect(m.l + 0.5, m.t + 0.5, pw, ph);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of hi % 2 === 0 ? [0, hi / 2, hi] : [0, hi]) {  // whole item counts only
    ctx.fillText(String(v), m.l - 4, m.t + ph * (1 - v / hi));
  }
  const bounds = fb.buckets;
  for (let i = 0; i < n; i++) {
    const bh = ph * counts[i] / hi;
    const hue = Math.round(120 * i / Math.max(1, n - 1));
    ctx.fillStyle = `hsl(${hue}, 55%, 50%)`;
    ctx.fillRect(m.l + i * bw + 2, m.t + ph - bh, bw - 4, bh);
    ctx.fillStyle = "#7d8a99"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    const lo = i === 0 ? null : bounds[i - 1];
    const label = i === 0 ? "≤" + bounds[0] : bounds[i] === "+Inf" ? ">" + lo : lo + "–" + bounds[i];
    ctx.fillText(label, m.l + (i + 0.5) * bw, m.t + ph + 4);
  }
}

function anyValue(p) {
  if (!p) return false;
  for (const panel of Object.values(PANELS)) for (const s of panel.series) {
    const v = p[s.key]; if (v !== null && v !== undefined) return true;
  }
  return false;
}

function render(doc) {
  const latest = doc.latest;
  setReadouts(latest);
  setSources(doc.sources);
  document.getElementById("window").textContent = doc.window_s;
  document.getElementById("interval").textContent = doc.interval_s;
  const up = (doc.sources || []).filter(s => s.up).length, total = (doc.sources || []).length;
  const status = document.getElementById("status");
  if (anyValue(latest)) {
    document.body.dataset.state = "live";
    status.textContent = `live · ${up}/${total} sources up`;
  } else {
    document.body.dataset.state = "nodata";
    status.textContent = latest ? `no data yet · ${up}/${total} sources up` : "no data yet";
  }
  if (latest) document.getElementById("updated").textContent = new Date(latest.t * 1000).toLocaleTimeString();
  renderFeedback(doc.feedback);
  drawAll();
}

async function poll() {
  try {
    const url = "dashboard/data" + (lastT !== null ? "?since=" + lastT : "");
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const doc = await resp.json();
    for (const p of doc.history || []) if (lastT === null || p.t > lastT) { points.push(p); lastT = p.t; }
    const cutoff = (lastT || 0) - SPAN_MAX_S;
    while (points.length && points[0].t < cutoff) points.shift();
    render(doc);
  } catch (err) {
    document.body.dataset.state = "error";
    document.getElementById("status").textContent = "dashboard data unavailable: " + err.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("resize", drawAll);
drawAll();
poll();
