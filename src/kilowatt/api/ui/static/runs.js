// Runs: the filtered table, one run's page, and the overlay comparison of several runs.
import { artifactUrl, get } from "./api.js";
import { lineChart } from "./charts.js";
import { bytes, duration, energy, esc, grams, num, usd, when } from "./format.js";

// Metric keys drawn under "System" rather than "Metrics".
const SYSTEM_KEY = /(^system[/.]|power|energy|throughput|samples_per_s|tokens_per_s|step_time|stall|_w$|_j$|gco2e|cost_usd|memory)/;

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

function runRow(run) {
  return `<tr data-run-id="${esc(run.id)}">
    <td><input type="checkbox" class="pick" value="${esc(run.id)}" aria-label="select run"></td>
    <td><a href="#/runs/${encodeURIComponent(run.id)}">${esc(run.name || run.id)}</a></td>
    <td>${esc(run.project)}</td><td>${esc(run.status)}</td>
    <td>${when(run.started_at)}</td><td class="num">${duration(run.duration_s)}</td>
    <td>${Object.entries(run.params || {}).slice(0, 4).map(([k, v]) =>
      `<span class="tag">${esc(k)}=${esc(v)}</span>`).join("")}</td>
  </tr>`;
}

export async function runsPage(main, _args, query) {
  const [projects, runs] = await Promise.all([
    get("/projects", { limit: 1000 }),
    get("/runs", {
      project: query.get("project"), status: query.get("status"), tag: query.get("tag"),
      param: query.get("param"), limit: 200,
    }),
  ]);
  main.innerHTML = `<h1>Runs <span class="muted" id="run-count">${runs.total}</span></h1>
    ${filterForm(query, projects.items)}
    <table id="runs-table"><thead><tr><th></th><th>run</th><th>project</th><th>status</th>
    <th>started</th><th class="num">duration</th><th>params</th></tr></thead>
    <tbody>${runs.items.map(runRow).join("") || `<tr><td colspan="7" class="muted">No runs match.</td></tr>`}</tbody></table>`;
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

function summaryCards(run) {
  const s = run.summary || {};
  const cards = [
    ["status", esc(run.status)], ["duration", duration(run.duration_s)],
    ["energy", energy(s.energy_j)], ["cost", usd(s.cost_usd)], ["carbon", grams(s.carbon_gco2e)],
  ];
  // How the usage figures were obtained (measured-nvml, estimated-tdp, ...), said once.
  const method = s.method ? `<p class="muted" id="usage-method">usage: ${esc(s.method)}</p>` : "";
  return `<div class="cards">${cards.map(([label, value]) =>
    `<div class="card" data-key="${label}"><div class="label">${label}</div><div class="value">${value}</div></div>`).join("")}</div>${method}`;
}

function keyValueTable(id, mapping) {
  const rows = Object.entries(mapping || {}).map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`).join("");
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

function lineageList(graph) {
  const names = new Map(graph.nodes.map((n) => [n.id, `${n.kind}: ${n.label}`]));
  const rows = graph.edges.map((e) =>
    `<li>${esc(names.get(e.source) || e.source)} <span class="muted">—${esc(e.relation)}→</span> ${esc(names.get(e.target) || e.target)}</li>`);
  return `<ul id="lineage">${rows.join("") || `<li class="muted">no lineage recorded</li>`}</ul>`;
}

export async function runPage(main, args) {
  const runId = args[0];
  const enc = encodeURIComponent(runId);
  const [run, artifacts, graph] = await Promise.all([
    get(`/runs/${enc}`), get(`/runs/${enc}/artifacts`, { limit: 1000 }), get(`/runs/${enc}/lineage`),
  ]);
  main.innerHTML = `<h1>${esc(run.name || run.id)} <span class="muted">${esc(run.project)}</span></h1>
    ${summaryCards(run)}
    <h2>Metrics</h2><div class="charts" id="metric-charts"></div>
    <h2>System</h2><div class="charts" id="system-charts"></div>
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
  const system = histories.filter((h) => SYSTEM_KEY.test(h.key));
  const model = histories.filter((h) => !SYSTEM_KEY.test(h.key));
  drawHistories(main.querySelector("#metric-charts"), model);
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
      <td>${Object.entries(r.params || {}).map(([k, v]) => `<span class="tag">${esc(k)}=${esc(v)}</span>`).join("")}</td></tr>`).join("")}
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
