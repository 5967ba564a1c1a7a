// The dashboard: a hash router over a handful of pages, each a function of the API.
import { getToken, setToken } from "./api.js";
import { esc } from "./format.js";
import { runsPage, runPage, comparePage } from "./runs.js";
import { modelsPage, deploymentsPage, auditPage } from "./registry.js";
import { planPage, totalsPage } from "./planning.js";

const PAGES = {
  runs: runsPage,
  run: runPage,
  compare: comparePage,
  models: modelsPage,
  deployments: deploymentsPage,
  plan: planPage,
  totals: totalsPage,
  audit: auditPage,
};

function parseHash() {
  const [path, query] = (window.location.hash.replace(/^#\/?/, "") || "runs").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let name = parts[0] || "runs";
  if (name === "runs" && parts.length > 1) name = "run";
  return { name, args: parts.slice(1), query: new URLSearchParams(query || "") };
}

async function render() {
  const main = document.getElementById("main");
  const { name, args, query } = parseHash();
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.page === (name === "run" || name === "compare" ? "runs" : name));
  });
  const page = PAGES[name];
  main.innerHTML = "";
  if (!page) {
    main.innerHTML = `<p class="error">No page called ${esc(name)}.</p>`;
    return;
  }
  try {
    await page(main, args, query);
  } catch (err) {
    const hint = err.status === 401 ? " Paste an API token above (kilowatt token create)." : "";
    main.innerHTML = `<p class="error">${esc(err.message)}${hint}</p>`;
  }
  main.dataset.ready = name;
}

document.getElementById("token").value = getToken();
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value.trim());
  render();
});
window.addEventListener("hashchange", render);
render();
