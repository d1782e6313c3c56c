// peerscale analyst: charts (vega-embed on the vendored Vega), sortable and filterable tables. No network.
"use strict";

function renderCharts() {
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  document.querySelectorAll("div.chart[data-spec]").forEach((el) => {
    const source = document.getElementById(el.dataset.spec);
    if (!source) return;
    const spec = JSON.parse(source.textContent);
    const options = { actions: false, renderer: "svg" };
    if (dark) options.theme = "dark";
    window.vegaEmbed(el, spec, options)
      .then(() => { el.dataset.rendered = "true"; })
      .catch((err) => { el.dataset.rendered = "error"; console.error("chart " + el.id + ": " + err); });
  });
}

function cellValue(row, index, kind) {
  const cell = row.cells[index];
  if (!cell) return "";
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (kind === "num") {
    const n = parseFloat(String(raw).replace(/[$,%\s+]/g, ""));
    return Number.isNaN(n) ? -Infinity : n;
  }
  return raw.toLowerCase();
}

function makeSortable(table) {
  const headers = Array.from(table.tHead ? table.tHead.rows[0].cells : []);
  headers.forEach((th, index) => {
    const button = th.querySelector("button");
    if (!button) return;
    button.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.setAttribute("aria-sort", "none"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const kind = th.dataset.kind || "text";
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = cellValue(a, index, kind), y = cellValue(b, index, kind);
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
}

function makeFilter(input) {
  const table = document.getElementById(input.dataset.filter);
  if (!table) return;
  input.addEventListener("input", () => {
    const needle = input.value.trim().toLowerCase();
    let shown = 0;
    Array.from(table.tBodies[0].rows).forEach((row) => {
      const hit = !needle || row.textContent.toLowerCase().includes(needle);
      row.hidden = !hit;
      if (hit) shown += 1;
    });
    table.dataset.shown = String(shown);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.querySelectorAll("input[data-filter]").forEach(makeFilter);
  renderCharts();
});
