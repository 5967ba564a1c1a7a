// Line and bar charts drawn by uPlot (vendored; global `uPlot`).
import { siTicks } from "./format.js";

const PALETTE = ["#0f766e", "#c2410c", "#1d4ed8", "#a21caf", "#4d7c0f", "#b45309", "#be123c"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

// Merge series with different x values onto one sorted x axis (nulls where absent).
export function alignSeries(seriesList) {
  const xs = Array.from(new Set(seriesList.flatMap((s) => s.x))).sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = seriesList.map((s) => {
    const column = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => { column[index.get(x)] = s.y[i]; });
    return column;
  });
  return [xs, ...ys];
}

// The width a y axis needs for its widest label (the tick marks and gap included), measured
// in the axis font, so labels such as "12.5G" are never cut off at the canvas edge. A y axis's
// ticks depend on the plot's height, not on this width, so uPlot's sizing passes settle.
function fittedAxisSize(u, values, axisIndex) {
  const axis = u.axes[axisIndex];
  u.ctx.font = axis.font[0];
  const widest = Math.max(0, ...(values || []).map((v) => u.ctx.measureText(String(v)).width));
  return Math.ceil(axis.ticks.size + axis.gap + 4 + widest / devicePixelRatio);
}

// A y axis with SI-prefixed ticks and the width they need.
const SI_AXIS = { values: (_u, ticks) => siTicks(ticks), size: fittedAxisSize };

export function lineChart(container, title, seriesList, xLabel = "step") {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.metric = title;
  box.innerHTML = `<h3></h3>`;
  box.querySelector("h3").textContent = title;
  container.appendChild(box);
  const width = Math.max(320, Math.min(620, container.clientWidth - 20 || 560));
  const opts = {
    width, height: 240,
    scales: { x: { time: false } },
    axes: [{ label: xLabel, values: (_u, ticks) => siTicks(ticks) }, SI_AXIS],
    series: [{ label: xLabel }, ...seriesList.map((s, i) => ({
      label: s.label, stroke: color(i), width: 1.5, spanGaps: true,
    }))],
  };
  box.uplot = new uPlot(opts, alignSeries(seriesList), box);
  return box.uplot;
}

export function barChart(container, title, labels, values, unit) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.metric = title;
  box.innerHTML = `<h3></h3>`;
  box.querySelector("h3").textContent = `${title} (${unit})`;
  container.appendChild(box);
  const xs = labels.map((_, i) => i);
  const opts = {
    width: Math.max(320, Math.min(620, container.clientWidth - 20 || 560)), height: 220,
    scales: { x: { time: false, range: [-0.5, labels.length - 0.5] } },
    axes: [{ values: (_, ticks) => ticks.map((t) => labels[t] ?? "") }, SI_AXIS],
    series: [{}, {
      label: unit, stroke: color(0), fill: "rgba(15,118,110,0.35)",
      paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false },
    }],
  };
  box.uplot = new uPlot(opts, [xs, values], box);
  return box.uplot;
}
