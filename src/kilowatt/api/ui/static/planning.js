// The plan page (upload a spec, see ranked configurations) and energy/cost/carbon totals.
import { get, post } from "./api.js";
import { barChart } from "./charts.js";
import { duration, energy, energyUnit, esc, grams, usd } from "./format.js";

function candidateTable(result) {
  return `<table id="plan-table"><thead><tr><th>#</th><th>configuration</th><th class="num">time</th>
    <th class="num">cost</th><th class="num">energy</th><th class="num">carbon</th><th>bottleneck</th></tr></thead>
    <tbody>${result.candidates.map((c, i) => `<tr class="${c.label === result.recommended ? "recommended" : ""}">
      <td>${i + 1}</td><td>${esc(c.label)}${c.label === result.recommended ? ' <span class="tag">recommended</span>' : ""}</td>
      <td class="num">${duration(c.time_s)}</td><td class="num">${usd(c.cost_usd)}</td>
      <td class="num">${energy(c.energy_j)}</td><td class="num">${grams(c.carbon_gco2e)}</td>
      <td>${esc(c.bottleneck || "")}</td></tr>`).join("")}</tbody></table>`;
}

function showPlan(container, result) {
  container.innerHTML = `<h2>Ranked plans</h2>${candidateTable(result)}
    ${(result.notes || []).map((n) => `<p class="muted">${esc(n)}</p>`).join("")}
    <div class="charts" id="plan-charts"></div>`;
  const charts = container.querySelector("#plan-charts");
  const top = result.candidates.slice(0, 12);
  const labels = top.map((c) => c.label);
  barChart(charts, "time", labels, top.map((c) => (c.time_s ?? 0) / 3600), "h");
  barChart(charts, "cost", labels, top.map((c) => c.cost_usd ?? 0), "USD");
  const [div, unit] = energyUnit(Math.max(...top.map((c) => c.energy_j ?? 0)));
  barChart(charts, "energy", labels, top.map((c) => (c.energy_j ?? 0) / div), unit);
}

export async function planPage(main) {
  main.innerHTML = `<h1>Plan a workload</h1>
    <p class="muted">Paste a spec (YAML or JSON) or choose a file; nothing is stored.</p>
    <form id="plan-form"><input type="file" id="plan-file" accept=".yaml,.yml,.json">
    <textarea id="plan-spec" name="spec" placeholder="kind: train ..."></textarea>
    <button type="submit">Plan</button></form><div id="plan-result"></div>`;
  const text = main.querySelector("#plan-spec");
  main.querySelector("#plan-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) text.value = await file.text();
  });
  main.querySelector("#plan-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = main.querySelector("#plan-result");
    out.innerHTML = `<p class="muted">Planning…</p>`;
    try {
      showPlan(out, await post("/plans", text.value, "application/yaml"));
    } catch (err) {
      out.innerHTML = `<p class="error">${esc(err.message)}</p>`;
    }
  });
}

export async function totalsPage(main, _args, query) {
  const group = query.get("group") || "week";
  const totals = await get("/totals", { group });
  main.innerHTML = `<h1>Energy, cost and carbon by project and ${esc(group)}</h1>
    <p><a href="#/totals?group=week">by week</a> · <a href="#/totals?group=project">by project</a></p>
    <div class="cards" id="grand-total">
      <div class="card"><div class="label">energy</div><div class="value">${energy(totals.total.energy_j)}</div></div>
      <div class="card"><div class="label">cost</div><div class="value">${usd(totals.total.cost_usd)}</div></div>
      <div class="card"><div class="label">carbon</div><div class="value">${grams(totals.total.carbon_gco2e)}</div></div>
      <div class="card"><div class="label">runs</div><div class="value">${totals.total.runs}</div></div>
    </div>
    <table id="totals"><thead><tr><th>project</th><th>${group === "week" ? "week" : ""}</th><th class="num">runs</th>
    <th class="num">time</th><th class="num">energy</th><th class="num">cost</th><th class="num">carbon</th></tr></thead>
    <tbody>${totals.items.map((t) => `<tr><td>${esc(t.project)}</td><td>${esc(t.week || "")}</td>
      <td class="num">${t.runs}</td><td class="num">${duration(t.time_s)}</td><td class="num">${energy(t.energy_j)}</td>
      <td class="num">${usd(t.cost_usd)}</td><td class="num">${grams(t.carbon_gco2e)}</td></tr>`).join("")}</tbody></table>
    <div class="charts" id="totals-charts"></div>`;
  if (totals.items.length) {
    const charts = main.querySelector("#totals-charts");
    const labels = totals.items.map((t) => (t.week ? `${t.project} ${t.week}` : t.project));
    const [div, unit] = energyUnit(Math.max(...totals.items.map((t) => t.energy_j ?? 0)));
    barChart(charts, "energy", labels, totals.items.map((t) => (t.energy_j ?? 0) / div), unit);
    // A figure no run recorded has no chart (a row of zeros would claim it was free).
    if (totals.total.cost_usd !== null) {
      barChart(charts, "cost", labels, totals.items.map((t) => t.cost_usd ?? 0), "USD");
    }
    if (totals.total.carbon_gco2e !== null) {
      barChart(charts, "carbon", labels, totals.items.map((t) => t.carbon_gco2e ?? 0), "g CO2e");
    }
  }
}
