// The model registry, deployments and the audit log.
import { get } from "./api.js";
import { esc, num, when } from "./format.js";

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
      <th>artifact</th><th>created</th><th>by</th></tr></thead><tbody>${versions.items.map((v) =>
        `<tr><td>v${v.version}</td><td>${(aliasOf[v.version] || []).map((a) => `<span class="tag">${esc(a)}</span>`).join("")}</td>
        <td>${v.run_id ? `<a href="#/runs/${encodeURIComponent(v.run_id)}">${esc(v.run_id)}</a>` : "–"}</td>
        <td>${esc(v.artifact || "–")}</td><td>${when(v.created_at)}</td><td>${esc(v.created_by)}</td></tr>`).join("")}
      </tbody></table>`;
    container.appendChild(section);
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
