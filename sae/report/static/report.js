// Feature browser: the list of browsed latents and, for the selected one, its top contexts
// with each token shaded by the latent's activation, its activation histogram and the tokens
// it promotes. Marks <body data-ready="1"> when done, so a headless browser can tell that the
// script ran to the end.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    const a = Math.abs(x);
    return a >= 1e4 || a < 1e-3 ? x.toExponential(1) : String(Number(x.toPrecision(3)));
  }

  function histogram(hist) {
    const width = 360, height = 140, left = 40, bottom = 24, top = 18;
    const svg = svgEl("svg", { class: "chart histogram", width, height, viewBox: `0 0 ${width} ${height}` });
    const title = svgEl("text", { x: width / 2, y: 13, class: "chart-title", "text-anchor": "middle" });
    title.textContent = "activation histogram (nonzero)";
    svg.appendChild(title);
    const counts = hist.counts, edges = hist.edges;
    if (!counts.length) return svg;
    const maxCount = Math.max(...counts, 1);
    const span = edges[edges.length - 1] - edges[0] || 1;
    const px = (x) => left + ((x - edges[0]) / span) * (width - left - 8);
    const py = (c) => height - bottom - (c / maxCount) * (height - bottom - top);
    counts.forEach((c, i) => {
      if (!c) return;
      const bar = svgEl("rect", {
        x: px(edges[i]).toFixed(1), y: py(c).toFixed(1), class: "bar",
        width: Math.max(px(edges[i + 1]) - px(edges[i]) - 0.5, 0.5).toFixed(1),
        height: (height - bottom - py(c)).toFixed(1),
      });
      const tip = svgEl("title");
      tip.textContent = `${fmt(edges[i])} to ${fmt(edges[i + 1])}: ${c}`;
      bar.appendChild(tip);
      svg.appendChild(bar);
    });
    [[edges[0], "start"], [edges[edges.length - 1], "end"]].forEach(([v, anchor]) => {
      const t = svgEl("text", { x: px(v), y: height - 8, class: "tick", "text-anchor": anchor });
      t.textContent = fmt(v);
      svg.appendChild(t);
    });
    const t = svgEl("text", { x: left - 4, y: top + 8, class: "tick", "text-anchor": "end" });
    t.textContent = String(maxCount);
    svg.appendChild(t);
    return svg;
  }

  function context(ctx, maxAct) {
    const row = el("div", { class: "context" });
    row.appendChild(el("span", { class: "peak-value" }, fmt(ctx.acts[ctx.peak])));
    ctx.tokens.forEach((tok, i) => {
      const act = ctx.acts[i];
      const span = el("span", { class: i === ctx.peak ? "tok peak" : "tok", title: `${JSON.stringify(tok)}: ${fmt(act)}` });
      span.textContent = tok.replace(/\n/g, "↵");
      if (act > 0) span.style.background = `rgba(255, 112, 0, ${Math.min(1, act / maxAct).toFixed(3)})`;
      row.appendChild(span);
    });
    return row;
  }

  function tokenTable(title, rows) {
    const box = el("div");
    box.appendChild(el("h4", {}, title));
    const table = el("table", { class: "tokens-table" });
    for (const [tok, value] of rows) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, JSON.stringify(tok)));
      tr.appendChild(el("td", {}, fmt(value)));
      table.appendChild(tr);
    }
    box.appendChild(table);
    return box;
  }

  function detail(entry) {
    const box = document.getElementById("latent-detail");
    box.replaceChildren();
    box.appendChild(el("h3", { id: `latent-${entry.latent}` }, `Latent ${entry.latent}`));
    let meta = `${entry.reason} · density ${fmt(entry.density)} · max activation ${fmt(entry.max_activation)}`;
    if (entry.label) {
      const l = entry.label;
      meta += ` · best match ${l.indicator}: precision ${fmt(l.precision)}, recall ${fmt(l.recall)}, F1 ${fmt(l.f1)}`;
    }
    box.appendChild(el("p", {}, meta));
    box.appendChild(el("h4", {}, "Top activating contexts"));
    const contexts = el("div", { class: "contexts" });
    entry.contexts.forEach((ctx) => contexts.appendChild(context(ctx, entry.max_activation || 1)));
    box.appendChild(contexts);
    const columns = el("div", { class: "columns" });
    const hist = el("div");
    hist.appendChild(histogram(entry.histogram));
    columns.appendChild(hist);
    if (entry.promoted) columns.appendChild(tokenTable("Promoted tokens", entry.promoted));
    if (entry.suppressed) columns.appendChild(tokenTable("Suppressed tokens", entry.suppressed));
    box.appendChild(columns);
  }

  function browser() {
    const source = document.getElementById("browser-data");
    if (!source) return;
    const data = JSON.parse(source.textContent);
    const list = document.getElementById("latent-list");
    const byLatent = new Map();
    const select = (latent) => {
      const entry = byLatent.get(latent);
      if (!entry) return;
      list.querySelectorAll(".latent-item").forEach((b) => b.classList.toggle("selected", Number(b.dataset.latent) === latent));
      detail(entry);
    };
    for (const entry of data.latents) {
      byLatent.set(entry.latent, entry);
      const item = el("button", { class: "latent-item", "data-latent": String(entry.latent), type: "button" });
      item.appendChild(el("strong", {}, `#${entry.latent}`));
      item.appendChild(document.createTextNode(entry.label ? ` ${entry.label.indicator} (F1 ${fmt(entry.label.f1)})` : ""));
      item.appendChild(el("span", { class: "meta" }, `${entry.reason} · density ${fmt(entry.density)}`));
      item.addEventListener("click", () => select(entry.latent));
      list.appendChild(item);
    }
    document.querySelectorAll(".latent-link").forEach((a) =>
      a.addEventListener("click", () => select(Number(a.dataset.latent))));
    if (data.latents.length) select(data.latents[0].latent);
  }

  window.addEventListener("error", (event) => {
    document.body.dataset.error = String(event.message);
  });
  browser();
  document.body.dataset.ready = "1";
})();
