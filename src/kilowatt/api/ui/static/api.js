// Talking to the control-plane API: the token lives in this browser's localStorage only.
const TOKEN_KEY = "kilowatt.token";

export function getToken() {
  return window.localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) window.localStorage.setItem(TOKEN_KEY, token);
  else window.localStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function unwrap(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text }; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    const err = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

export async function get(path, params) {
  const query = params ? "?" + new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== "" && v !== undefined && v !== null)
  ).toString() : "";
  return unwrap(await fetch(`/api/v1${path}${query}`, { headers: headers() }));
}

export async function post(path, body, contentType) {
  const type = contentType || "application/json";
  const payload = type === "application/json" ? JSON.stringify(body) : body;
  return unwrap(await fetch(`/api/v1${path}`, {
    method: "POST", headers: headers({ "Content-Type": type }), body: payload,
  }));
}

export function artifactUrl(runId, path) {
  return `/api/v1/runs/${encodeURIComponent(runId)}/artifacts/${path.split("/").map(encodeURIComponent).join("/")}`;
}
