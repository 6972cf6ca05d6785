// sae serve: live updates on top of server-rendered pages. No libraries, no network beyond
// this server's own API.
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];

function fmtEta(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`
                   : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

// One chart on a canvas: series of {name, xs, ys} drawn as lines (or dots, with points: true).
function plot(parent, title, series, opts = {}) {
  const canvas = document.createElement("canvas");
  canvas.width = 500; canvas.height = 240; canvas.className = "chart";
  parent.appendChild(canvas);
  const g = canvas.getContext("2d");
  const L = 52, R = 410, T = 24, B = 210;
  const xs = series.flatMap(s => s.xs), ys = series.flatMap(s => s.ys).filter(Number.isFinite);
  g.font = "12px sans-serif"; g.fillStyle = "#222"; g.fillText(title, L, 14);
  if (!ys.length) { g.fillText("no data yet", L + 10, 120); return; }
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1; if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
  const px = x => L + (x - x0) / (x1 - x0) * (R - L), py = y => B - (y - y0) / (y1 - y0) * (B - T);
  g.strokeStyle = "#999"; g.strokeRect(L, T, R - L, B - T);
  g.fillText(y1.toPrecision(3), 2, T + 8); g.fillText(y0.toPrecision(3), 2, B);
  g.fillText(x0.toPrecision(3), L, B + 14); g.fillText(x1.toPrecision(3), R - 40, B + 14);
  if (opts.xLabel) g.fillText(opts.xLabel, (L + R) / 2 - 10, B + 26);
  series.forEach((s, i) => {
    g.strokeStyle = g.fillStyle = COLORS[i % COLORS.length];
    if (s.points) {
      s.xs.forEach((x, j) => { g.beginPath(); g.arc(px(x), py(s.ys[j]), 3.5, 0, 7); g.fill(); });
    } else {
      g.beginPath();
      s.xs.forEach((x, j) => j ? g.lineTo(px(x), py(s.ys[j])) : g.moveTo(px(x), py(s.ys[j])));
      g.stroke();
    }
    if (series.length > 1 && i < 12) g.fillText(s.name.slice(0, 12), R + 6, T + 10 + 13 * i);
  });
}

const CURVES = [["loss", "loss"], ["l0", "L0"], ["explained_variance", "explained variance"],
                ["dead_fraction", "dead fraction"]];

function bySae(records) {
  const out = {};
  for (const r of records) (out[r.sae || "sae"] ||= []).push(r);
  return out;
}

function drawCurves(box, records) {
  box.innerHTML = "";
  const groups = bySae(records);
  for (const [key, title] of CURVES) {
    plot(box, title, Object.entries(groups).map(([name, rs]) => (
      {name, xs: rs.map(r => r.samples), ys: rs.map(r => r[key])})), {xLabel: "samples"});
  }
}

async function refreshLogs(pre) {
  const r = await fetch(`/api/jobs/${pre.dataset.job}/logs?tail=20000`);
  if (r.ok) { pre.textContent = await r.text(); pre.scrollTop = pre.scrollHeight; }
}

function setProgress(p) {
  const bar = document.querySelector("progress"), pct = document.querySelector(".pct");
  if (p.fraction !== null && p.fraction !== undefined) {
    bar.value = p.fraction; pct.textContent = `${Math.round(100 * p.fraction)}%`;
  }
  document.querySelector(".eta").textContent = fmtEta(p.eta_seconds);
  const live = document.getElementById("live");
  if (p.step !== undefined) live.textContent = `step ${p.step} · loss ${p.loss?.toPrecision(4)} · L0 ${p.l0?.toPrecision(3)} · EV ${p.explained_variance?.toPrecision(3)} · dead ${p.dead_fraction?.toPrecision(2)}`;
}

async function jobPage(box) {
  const id = box.dataset.job, logs = document.getElementById("logs");
  let records = await (await fetch(`/api/jobs/${id}/curve`)).json();
  drawCurves(box, records);
  refreshLogs(logs);
  if (!box.dataset.live) return;
  const events = new EventSource(`/api/jobs/${id}/events`);
  events.addEventListener("state", e => {
    const s = JSON.parse(e.data).state, el = document.getElementById("state");
    el.textContent = s; el.className = `state ${s}`;
  });
  events.addEventListener("progress", e => {
    const p = JSON.parse(e.data);
    records = records.filter(r => r.step < p.records[0].step).concat(p.records);
    drawCurves(box, records); setProgress(p); refreshLogs(logs);
  });
  events.addEventListener("end", () => { events.close(); location.reload(); });
}

function jobsPage(table) {
  setInterval(async () => {
    const r = await fetch("/api/jobs?limit=500");
    if (!r.ok) return;
    for (const job of await r.json()) {
      const row = table.querySelector(`tr[data-job="${job.id}"]`);
      if (!row) { if (!table.querySelector("input:checked")) location.reload(); return; }
      const state = row.querySelector(".state");
      if (state.textContent !== job.state && ["done", "failed", "cancelled"].includes(job.state)
          && !table.querySelector("input:checked")) { location.reload(); return; }
      state.textContent = job.state; state.className = `state ${job.state}`;
      const f = job.progress.fraction;
      if (f !== null) { row.querySelector("progress").value = f; row.querySelector(".pct").textContent = `${Math.round(100 * f)}%`; }
      row.querySelector(".eta").textContent = fmtEta(job.progress.eta_seconds);
    }
  }, 2000);
}

function paretoFront(points, key) {
  // the points no other point beats on both: fewer active latents and more of `key`
  const sorted = points.filter(p => Number.isFinite(p[key])).sort((a, b) => a.l0 - b.l0);
  let best = -Infinity; const front = [];
  for (const p of sorted) if (p[key] > best) { best = p[key]; front.push(p); }
  return front;
}

function comparePage(data) {
  const pareto = document.getElementById("pareto"), overlay = document.getElementById("overlay");
  for (const key of ["ev", "f1"]) {
    const pts = data.points.filter(p => Number.isFinite(p[key]));
    if (!pts.length) continue;
    const front = paretoFront(pts, key);
    plot(pareto, `L0 against ${key === "ev" ? "explained variance" : "f1"}`, [
      {name: "runs", points: true, xs: pts.map(p => p.l0), ys: pts.map(p => p[key])},
      {name: "Pareto front", xs: front.map(p => p.l0), ys: front.map(p => p[key])}], {xLabel: "L0"});
    pareto.lastChild.title = "front: " + front.map(p => p.label).join(", ");
  }
  const entries = Object.entries(data.series);
  for (const [key, title] of CURVES.slice(0, 3)) {
    plot(overlay, title, entries.map(([name, rs]) => (
      {name, xs: rs.map(r => r.samples), ys: rs.map(r => r[key])})), {xLabel: "samples"});
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const curves = document.getElementById("curves");
  if (curves) jobPage(curves);
  const jobs = document.getElementById("jobs");
  if (jobs) jobsPage(jobs);
  const compare = document.getElementById("compare-data");
  if (compare) comparePage(JSON.parse(compare.textContent));
  for (const button of document.querySelectorAll("button[data-post]")) {
    button.addEventListener("click", async () => {
      const r = await fetch(button.dataset.post, {method: "POST"});
      if (!r.ok) alert((await r.json()).error); else location.reload();
    });
  }
  const publish = document.getElementById("publish");
  if (publish) publish.addEventListener("submit", async e => {
    e.preventDefault();
    const out = document.getElementById("publish-result");
    out.textContent = "publishing…";
    const r = await fetch(`/api/jobs/${publish.dataset.job}/publish`, {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({to: publish.to.value})});
    const body = await r.json();
    out.textContent = r.ok ? `published ${body.published.join(", ")}` : body.error;
  });
});
