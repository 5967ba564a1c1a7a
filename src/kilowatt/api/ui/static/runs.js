// Runs: the filtered table, one run's page, and the overlay comparison of several runs.
import { artifactUrl, get } from "./api.js";
import { lineChart } from "./charts.js";
import { bytes, duration, energy, esc, grams, num, si, usd, when } from "./format.js";

// Metric keys drawn under "System" rather than "Metrics".
const SYSTEM_KEY = /(^system[/.]|power|energy|throughput|samples_per_s|tokens_per_s|flops|mfu|step_time|stall|_w$|_j$|gco2e|cost_usd|memory)/;
// The data loader's figures (kilowatt.data): drawn in the run page's Data panel.
const DATA_KEY = /^data_/;
// Latest-value requests in flight at once while the runs table fills in its figures.
const FIGURE_REQUESTS = 6;

// A nested section (a spec's `backend`, `checkpoint`, ...) is stored as JSON text.
function nested(text) {
  if (typeof text !== "string" || !/^[[{]/.test(text)) return null;
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

function shortValue(value) {
  if (value !== null && typeof value === "object") return Array.isArray(value) ? "[…]" : "{…}";
  return String(value);
}

// A param as a person reads it: scalars as key=value; a nested section as a one-line
// summary of its first fields that opens to the whole value.
function paramTag(key, text) {
  const value = nested(text);
  if (value === null) return `<span class="tag" title="${esc(key)}=${esc(text)}">${esc(key)}=${esc(text)}</span>`;
  // What tells one section from another first (its kind or name), then set scalars.
  const rank = ([k, v]) => (["kind", "name", "type"].includes(k) ? 0 : v === null || typeof v === "object" ? 2 : 1);
  const fields = Object.entries(value).sort((a, b) => rank(a) - rank(b));
  const shown = fields.slice(0, 2).map(([k, v]) => `${k}=${shortValue(v)}`).join(", ");
  const more = fields.length > 2 ? `, +${fields.length - 2}` : "";
  return `<details class="nested"><summary class="tag">${esc(key)}: ${esc(shown + more)}</summary>
    <pre>${esc(JSON.stringify(value, null, 2))}</pre></details>`;
}

// The figures runs are compared by, from a run's latest metric values.
function keyFigures(latest) {
  const evalKeys = Object.keys(latest).filter((k) => k.startsWith("eval_")).sort();
  const evalKey = evalKeys.includes("eval_loss") ? "eval_loss" : evalKeys[0];
  return {
    loss: latest.fit_final_loss ?? latest.loss,
    evalKey,
    evalValue: evalKey === undefined ? undefined : latest[evalKey],
    samplesPerS: latest.fit_samples_per_s ?? latest.samples_per_s,
  };
}

async function latestByRun(runs) {
  const latest = new Map();
  const queue = [...runs];
  const fetchNext = async () => {
    for (let run = queue.shift(); run; run = queue.shift()) {
      latest.set(run.id, await get(`/runs/${encodeURIComponent(run.id)}/metrics`));
    }
  };
  await Promise.all(Array.from({ length: Math.min(FIGURE_REQUESTS, runs.length) }, fetchNext));
  return latest;
}

function filterForm(query, projects) {
  const options = projects.map((p) =>
    `<option ${p.name === query.get("project") ? "selected" : ""}>${esc(p.name)}</option>`).join("");
  const statuses = ["", "running", "finished", "failed", "killed"].map((s) =>
    `<option value="${s}" ${s === (query.get("status") || "") ? "selected" : ""}>${s || "any status"}</option>`).join("");
  return `<form class="filters" id="run-filters">
    <select name="project"><option value="">all projects</option>${options}</select>
    <select name="status">${statuses}</select>
    <input name="tag" placeholder="tag key=value" value="${esc(query.get("tag") || "")}">
    <input name="param" placeholder="param key=value" value="${esc(query.get("param") || "")}">
    <button type="submit">Filter</button>
    <button type="button" id="compare-button">Compare selected</button>
  </form>`;
}

const RUN_COLUMNS = `<th></th><th>run</th><th>project</th><th>status</th><th>started</th>
  <th class="num">duration</th><th class="num">final loss</th><th class="num" id="eval-column">eval</th>
  <th class="num">energy</th><th class="num">cost</th><th class="num">CO2e</th>
  <th class="num">samples/s</th><th>params</th>`;

function runRow(run, latest, evalKey) {
  const figures = keyFigures(latest || {});
  const s = run.summary || {};
  return `<tr data-run-id="${esc(run.id)}">
    <td><input type="checkbox" class="pick" value="${esc(run.id)}" aria-label="select run"></td>
    <td><a href="#/runs/${encodeURIComponent(run.id)}">${esc(run.name || run.id)}</a></td>
    <td>${esc(run.project)}</td><td>${esc(run.status)}</td>
    <td>${when(run.started_at)}</td><td class="num">${duration(run.duration_s)}</td>
    <td class="num" data-figure="loss">${num(figures.loss)}</td>
    <td class="num" data-figure="eval">${num(evalKey ? latest?.[evalKey] : undefined)}</td>
    <td class="num" data-figure="energy">${energy(s.energy_j)}</td>
    <td class="num" data-figure="cost">${usd(s.cost_usd)}</td>
    <td class="num" data-figure="carbon">${grams(s.carbon_gco2e)}</td>
    <td class="num" data-figure="throughput">${si(figures.samplesPerS)}</td>
    <td class="params">${Object.entries(run.params || {}).map(([k, v]) => paramTag(k, v)).join("")}</td>
  </tr>`;
}

// The eval metric most runs on the page report (eval_loss where there is one).
function commonEvalKey(latestList) {
  const counts = new Map();
  for (const latest of latestList) {
    const key = keyFigures(latest).evalKey;
    if (key) counts.set(key, (counts.get(key) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0]?.[0];
}

export async function runsPage(main, _args, query) {
  const [projects, runs] = await Promise.all([
    get("/projects", { limit: 1000 }),
    get("/runs", {
      project: query.get("project"), status: query.get("status"), tag: query.get("tag"),
      param: query.get("param"), limit: 200,
    }),
  ]);
  const latest = await latestByRun(runs.items);
  const evalKey = commonEvalKey([...latest.values()]);
  main.innerHTML = `<h1>Runs <span class="muted" id="run-count">${runs.total}</span></h1>
    ${filterForm(query, projects.items)}
    <table id="runs-table"><thead><tr>${RUN_COLUMNS}</tr></thead>
    <tbody>${runs.items.map((run) => runRow(run, latest.get(run.id), evalKey)).join("")
      || `<tr><td colspan="13" class="muted">No runs match.</td></tr>`}</tbody></table>`;
  if (evalKey) main.querySelector("#eval-column").textContent = evalKey;
  main.querySelector("#run-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams(new FormData(event.target));
    for (const [k, v] of [...params]) if (!v) params.delete(k);
    window.location.hash = `#/runs?${params}`;
  });
  main.querySelector("#compare-button").addEventListener("click", () => {
    const ids = [...main.querySelectorAll(".pick:checked")].map((box) => box.value);
    if (ids.length >= 2) window.location.hash = `#/compare?ids=${ids.map(encodeURIComponent).join(",")}`;
  });
}

function summaryCards(run, latest) {
  const s = run.summary || {};
  const figures = keyFigures(latest);
  // [data-key, label, value]: the evaluation metric sits beside energy and cost.
  const cards = [
    ["status", "status", esc(run.status)], ["duration", "duration", duration(run.duration_s)],
    ["loss", "final loss", num(figures.loss)],
    ["eval", esc(figures.evalKey || "eval"), num(figures.evalValue)],
    ["energy", "energy", energy(s.energy_j)], ["cost", "cost", usd(s.cost_usd)],
    ["carbon", "carbon", grams(s.carbon_gco2e)],
    ["throughput", "samples/s", si(figures.samplesPerS)],
  ];
  // How the usage figures were obtained (measured-nvml, estimated-tdp, ...), said once.
  const method = s.method ? `<p class="muted" id="usage-method">usage: ${esc(s.method)}</p>` : "";
  return `<div class="cards">${cards.map(([key, label, value]) =>
    `<div class="card" data-key="${key}"><div class="label">${label}</div><div class="value">${value}</div></div>`).join("")}</div>${method}`;
}

function keyValueTable(id, mapping) {
  const shown = (v) => {
    const value = typeof v === "object" && v !== null ? v : nested(v);
    return value === null ? esc(v) : `<pre>${esc(JSON.stringify(value, null, 2))}</pre>`;
  };
  const rows = Object.entries(mapping || {}).map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td>${shown(v)}</td></tr>`).join("");
  return `<table id="${id}"><tbody>${rows || `<tr><td class="muted">none</td></tr>`}</tbody></table>`;
}

async function fetchHistories(runId, keys) {
  return Promise.all(keys.map((key) =>
    get(`/runs/${encodeURIComponent(runId)}/metrics/${encodeURIComponent(key)}`, { max_points: 1000 })));
}

function drawHistories(container, histories) {
  // A single point is a summary figure, not a curve: it goes in the table only.
  const curves = histories.filter((h) => h.total_points > 1);
  curves.forEach((h) => {
    const label = h.downsampled ? `${h.key} (${h.steps.length} of ${h.total_points} points)` : h.key;
    lineChart(container, h.key, [{ label, x: h.steps, y: h.values }]);
  });
  return curves.length;
}

// Energy drawn as the running integral of logged power over wall time (J = W x s).
function energyFromPower(power) {
  const x = [];
  const y = [];
  let joules = 0;
  for (let i = 0; i < power.steps.length; i += 1) {
    if (i > 0 && power.values[i] !== null) joules += power.values[i] * (power.times[i] - power.times[i - 1]);
    x.push(power.steps[i]);
    y.push(joules);
  }
  return { label: "energy_j (integrated power_w)", x, y };
}
function lastValues(histories) {
  const rows = histories.map((h) => `<tr><td>${esc(h.key)}</td>
    <td class="num" data-metric-last="${esc(h.key)}">${num(h.values[h.values.length - 1])}</td>
    <td class="num">${h.total_points}</td></tr>`).join("");
  return `<table id="metric-summary"><thead><tr><th>metric</th><th class="num">last</th>
    <th class="num">points</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function percent(value) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : `${(value * 100).toFixed(1)}%`;
}

// Bytes and hit rate per cache tier, fetch latency and the time the loop waited for data,
// as the loader last reported them (a fit ends each series on its totals).
function dataPanel(latest) {
  const figure = (name) => latest[`data_${name}`];
  const tiers = [
    ["memory", figure("memory_bytes"), figure("memory_hit_rate")],
    ["disk", figure("disk_bytes"), figure("disk_hit_rate")],
    ["remote", figure("remote_bytes"), undefined],  // where the data set lives: no hit rate
  ];
  const rows = tiers.map(([tier, size, rate]) => `<tr data-tier="${tier}"><td>${tier}</td>
    <td class="num" data-figure="bytes" data-value="${esc(size ?? "")}">${bytes(size)}</td>
    <td class="num" data-figure="hit-rate" data-value="${esc(rate ?? "")}">${percent(rate)}</td></tr>`);
  const cards = [
    ["fetch-latency", "fetch latency (mean)", si(figure("fetch_latency_s"), "s")],
    ["data-wait", "waiting for data", si(figure("wait_s"), "s")],
    ["corrupt-refetches", "corrupt copies re-fetched", num(figure("corrupt_refetches"))],
  ];
  return `<table id="data-tiers"><thead><tr><th>tier</th><th class="num">bytes read</th>
    <th class="num">hit rate</th></tr></thead><tbody>${rows.join("")}</tbody></table>
    <div class="cards">${cards.map(([key, label, value]) =>
      `<div class="card" data-key="${key}"><div class="label">${label}</div><div class="value">${value}</div></div>`).join("")}</div>`;
}

function lineageList(graph) {
  const names = new Map(graph.nodes.map((n) => [n.id, `${n.kind}: ${n.label}`]));
  const rows = graph.edges.map((e) =>
    `<li>${esc(names.get(e.source) || e.source)} <span class="muted">—${esc(e.relation)}→</span> ${esc(names.get(e.target) || e.target)}</li>`);
  return `<ul id="lineage">${rows.join("") || `<li class="muted">no lineage recorded</li>`}</ul>`;
}

export async function runPage(main, args) {
  const runId = args[0];
  const enc = encodeURIComponent(runId);
  const [run, artifacts, graph, latest] = await Promise.all([
    get(`/runs/${enc}`), get(`/runs/${enc}/artifacts`, { limit: 1000 }), get(`/runs/${enc}/lineage`),
    get(`/runs/${enc}/metrics`),
  ]);
  main.innerHTML = `<h1>${esc(run.name || run.id)} <span class="muted">${esc(run.project)}</span></h1>
    ${summaryCards(run, latest)}
    <h2>Metrics</h2><div class="charts" id="metric-charts"></div>
    <h2>System</h2><div class="charts" id="system-charts"></div>
    <section id="data-panel" hidden><h2>Data</h2><div id="data-figures"></div>
      <div class="charts" id="data-charts"></div></section>
    <div id="metric-table"></div>
    <h2>Parameters</h2>${keyValueTable("params", run.params)}
    <h2>Tags</h2>${keyValueTable("tags", run.tags)}
    <h2>Environment</h2>${keyValueTable("env", run.env)}
    <h2>Artifacts</h2><table id="artifacts"><tbody>${artifacts.items.map((a) =>
      `<tr><td><a href="${artifactUrl(run.id, a.path)}" download>${esc(a.path)}</a></td>
      <td class="num">${bytes(a.size_bytes)}</td><td class="muted">${esc((a.sha256 || "").slice(0, 12))}</td></tr>`).join("")
      || `<tr><td class="muted">none</td></tr>`}</tbody></table>
    <h2>Lineage</h2>${lineageList(graph)}`;
  const keys = run.metric_keys || [];
  const histories = await fetchHistories(run.id, keys);
  const data = histories.filter((h) => DATA_KEY.test(h.key));
  const system = histories.filter((h) => !DATA_KEY.test(h.key) && SYSTEM_KEY.test(h.key));
  const model = histories.filter((h) => !DATA_KEY.test(h.key) && !SYSTEM_KEY.test(h.key));
  drawHistories(main.querySelector("#metric-charts"), model);
  if (data.length) {  // a run that read a kilowatt data set
    const panel = main.querySelector("#data-panel");
    panel.hidden = false;
    panel.querySelector("#data-figures").innerHTML = dataPanel(latest);
    drawHistories(panel.querySelector("#data-charts"), data);
  }
  const systemCharts = main.querySelector("#system-charts");
  const drawn = drawHistories(systemCharts, system);
  const power = system.find((h) => h.key.endsWith("power_w") && h.total_points > 1 && !h.downsampled);
  if (power) lineChart(systemCharts, "energy_j", [energyFromPower(power)]);
  if (!drawn) systemCharts.innerHTML = `<p class="muted">No system metrics logged.</p>`;
  main.querySelector("#metric-table").innerHTML = `<h2>Latest values</h2>${lastValues(histories)}`;
}

export async function comparePage(main, _args, query) {
  const ids = (query.get("ids") || "").split(",").filter(Boolean);
  const runs = await Promise.all(ids.map((id) => get(`/runs/${encodeURIComponent(id)}`)));
  const keys = [...new Set(runs.flatMap((r) => r.metric_keys || []))].sort();
  main.innerHTML = `<h1>Compare ${runs.length} runs</h1>
    <table id="compare-table"><thead><tr><th>run</th><th>project</th><th>status</th>
    <th class="num">duration</th><th>params</th></tr></thead><tbody>${runs.map((r) =>
      `<tr><td><a href="#/runs/${encodeURIComponent(r.id)}">${esc(r.name || r.id)}</a></td>
      <td>${esc(r.project)}</td><td>${esc(r.status)}</td><td class="num">${duration(r.duration_s)}</td>
      <td class="params">${Object.entries(r.params || {}).map(([k, v]) => paramTag(k, v)).join("")}</td></tr>`).join("")}
    </tbody></table><h2>Metrics</h2><div class="charts" id="compare-charts"></div>`;
  const container = main.querySelector("#compare-charts");
  const summary = [];
  for (const key of keys) {
    const owners = runs.filter((r) => (r.metric_keys || []).includes(key));
    const histories = await Promise.all(owners.map((r) =>
      get(`/runs/${encodeURIComponent(r.id)}/metrics/${encodeURIComponent(key)}`, { max_points: 1000 })));
    if (histories.some((h) => h.total_points > 1)) {
      lineChart(container, key, histories.map((h, i) => ({
        label: owners[i].name || owners[i].id, x: h.steps, y: h.values,
      })));
    } else {
      const byRun = new Map(owners.map((r, i) => [r.id, histories[i].values[0]]));
      summary.push(`<tr><td>${esc(key)}</td>${runs.map((r) =>
        `<td class="num">${num(byRun.get(r.id))}</td>`).join("")}</tr>`);
    }
  }
  if (summary.length) {
    main.insertAdjacentHTML("beforeend", `<h2>Summary figures</h2><table id="compare-summary">
      <thead><tr><th>metric</th>${runs.map((r) => `<th class="num">${esc(r.name || r.id)}</th>`).join("")}</tr></thead>
      <tbody>${summary.join("")}</tbody></table>`);
  }
}
