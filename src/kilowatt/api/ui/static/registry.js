// The model registry (variants, Pareto front, gated promotion), deployments and the audit log.
import { get, getToken } from "./api.js";
import { barChart } from "./charts.js";
import { bytes, esc, num, when } from "./format.js";

export async function modelsPage(main) {
  const models = await get("/models", { limit: 1000 });
  main.innerHTML = `<h1>Models</h1><div id="models"></div>`;
  const container = main.querySelector("#models");
  if (!models.items.length) container.innerHTML = `<p class="muted">No registered models.</p>`;
  for (const model of models.items) {
    const versions = await get(`/models/${encodeURIComponent(model.name)}/versions`, { limit: 1000 });
    const aliasOf = {};
    Object.entries(model.aliases || {}).forEach(([alias, v]) => { (aliasOf[v] ||= []).push(alias); });
    const section = document.createElement("section");
    section.innerHTML = `<h2>${esc(model.name)}</h2>
      <table class="versions"><thead><tr><th>version</th><th>aliases</th><th>source run</th>
      <th>artifact</th><th>transform</th><th>created</th><th>by</th><th></th></tr></thead><tbody>${versions.items.map((v) =>
        `<tr><td>v${v.version}</td><td>${(aliasOf[v.version] || []).map((a) => `<span class="tag">${esc(a)}</span>`).join("")}</td>
        <td>${v.run_id ? `<a href="#/runs/${encodeURIComponent(v.run_id)}">${esc(v.run_id)}</a>` : "–"}</td>
        <td>${esc(v.artifact || "–")}</td><td>${esc((v.signature || {}).transform || "–")}</td>
        <td>${when(v.created_at)}</td><td>${esc(v.created_by)}</td>
        <td>${(aliasOf[v.version] || []).includes("production") ? "" :
          `<button class="promote" data-version="${v.version}">promote to production</button>`}</td></tr>`).join("")}
      </tbody></table><p class="gate-result"></p><div class="variants"></div>`;
    container.appendChild(section);
    section.querySelectorAll("button.promote").forEach((button) => {
      button.addEventListener("click", () => promote(section, model.name, Number(button.dataset.version)));
    });
    const parents = versions.items.filter((v) => !(v.signature || {}).parent);
    for (const v of parents) await showVariants(section.querySelector(".variants"), model.name, v.version);
  }
}

// The gate decides; the page only shows its verdict and figures.
async function promote(section, name, version) {
  const out = section.querySelector(".gate-result");
  const response = await fetch(`/api/v1/models/${encodeURIComponent(name)}/aliases/production/promote`, {
    method: "POST",
    headers: Object.assign({ "Content-Type": "application/json" },
      getToken() ? { Authorization: `Bearer ${getToken()}` } : {}),
    body: JSON.stringify({ version }),
  });
  const decision = await response.json();
  if (!decision.checks) {
    out.className = "gate-result error";
    out.textContent = `${response.status}: ${JSON.stringify(decision.detail || decision)}`;
    return;
  }
  out.className = `gate-result ${decision.moved ? "" : "error"}`;
  out.textContent = decision.moved
    ? `production -> ${decision.candidate}: ${decision.checks.map((c) => c.detail).join("; ")}`
    : `refused: ${decision.reasons.join("; ")} (production stays at ${decision.holder || "none"})`;
}

// The newest optimize report of a version: every variant, the Pareto front and the choice.
async function showVariants(container, name, version) {
  let report;
  try {
    report = await get(`/models/${encodeURIComponent(name)}/versions/${version}/variants`);
  } catch (err) {
    if (err.status === 404) return;
    throw err;
  }
  const box = document.createElement("div");
  box.className = "variant-report";
  box.innerHTML = `<h3>v${version}: variants (${esc(report.objective)}, budget ${num(report.max_metric_drop * 100, 3)}%)</h3>
    <p class="muted">${report.notes.map(esc).join("; ")}</p>
    <table class="variants"><thead><tr><th>variant</th><th class="num">${esc(report.metric_name)}</th>
    <th class="num">drop</th><th class="num">size</th><th class="num">p99</th><th class="num">inf/s</th>
    <th class="num">J/1k inf</th><th></th></tr></thead><tbody>${report.candidates.map((c) => c.status === "skipped"
      ? `<tr><td>${esc(c.label)}</td><td colspan="7" class="muted">skipped: ${esc(c.reason)}</td></tr>`
      : `<tr class="${c.pareto ? "pareto" : ""}"><td>${esc(c.label)}</td><td class="num">${num(c.metric)}</td>
        <td class="num">${num(c.metric_drop)}</td><td class="num">${bytes(c.bytes_on_disk)}</td>
        <td class="num">${num(c.latency_p99_s * 1000, 3)} ms</td><td class="num">${num(c.throughput_per_s, 3)}</td>
        <td class="num">${num(c.energy_per_1000_j, 3)}</td>
        <td>${[c.chosen && "chosen", c.pareto && "pareto", !c.within_budget && "over budget", c.version]
          .filter(Boolean).map(esc).join(", ")}</td></tr>`).join("")}</tbody></table>`;
  container.appendChild(box);
  const front = report.candidates.filter((c) => c.pareto).sort((a, b) => a.energy_per_1000_j - b.energy_per_1000_j);
  if (front.length) {
    barChart(box, "Pareto front: energy per 1,000 inferences", front.map((c) => c.label),
      front.map((c) => c.energy_per_1000_j), "J");
  }
}

function percentileCells(stats) {
  if (!stats || stats.error) return `<td colspan="4" class="muted">${esc(stats ? stats.error : "no stats")}</td>`;
  const ms = (s) => (s === null || s === undefined ? "–" : `${num(s * 1000, 3)} ms`);
  return `<td class="num">${ms(stats.latency_p50_s)}</td><td class="num">${ms(stats.latency_p95_s)}</td>
    <td class="num">${ms(stats.latency_p99_s)}</td>
    <td class="num">${stats.throughput_rps === null ? "–" : `${num(stats.throughput_rps, 3)} req/s`}</td>`;
}

export async function deploymentsPage(main) {
  const deployments = await get("/deployments", { limit: 1000 });
  main.innerHTML = `<h1>Deployments</h1><table id="deployments"><thead><tr><th>id</th><th>model</th>
    <th>endpoint</th><th>status</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th>
    <th class="num">throughput</th></tr></thead><tbody></tbody></table>`;
  const body = main.querySelector("#deployments tbody");
  if (!deployments.items.length) body.innerHTML = `<tr><td colspan="8" class="muted">No deployments.</td></tr>`;
  for (const d of deployments.items) {
    let stats;
    try { stats = await get(`/deployments/${d.id}/stats`); } catch (err) { stats = { error: err.message }; }
    const row = document.createElement("tr");
    row.innerHTML = `<td>${d.id}</td><td>${esc(d.model)} v${d.version}</td><td>${esc(d.endpoint)}</td>
      <td>${esc(d.status)}</td>${percentileCells(stats)}`;
    body.appendChild(row);
  }
}

export async function auditPage(main) {
  const [events, verdict] = await Promise.all([get("/audit", { limit: 200 }), get("/audit/verify")]);
  main.innerHTML = `<h1>Audit log</h1>
    <p id="audit-verdict" class="${verdict.ok ? "" : "error"}">${esc(verdict.message)}</p>
    <table id="audit"><thead><tr><th class="num">#</th><th>time</th><th>actor</th><th>action</th>
    <th>target</th></tr></thead><tbody>${events.items.map((e) =>
      `<tr><td class="num">${e.seq}</td><td>${when(e.time)}</td><td>${esc(e.actor)}</td>
      <td>${esc(e.action)}</td><td>${esc(e.target)}</td></tr>`).join("")}</tbody></table>`;
}
