// Numbers for people: SI inside, converted only here at the edge.
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Math.abs(value) >= 1e5 || (Math.abs(value) < 1e-3 && value !== 0)) return value.toExponential(3);
  return Number(value.toPrecision(digits)).toString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(2)} h`;
}

export function energy(joules) {
  if (joules === null || joules === undefined) return "–";
  if (joules >= 3.6e6) return `${(joules / 3.6e6).toFixed(3)} kWh`;
  if (joules >= 3.6e3) return `${(joules / 3.6e3).toFixed(3)} Wh`;
  return `${joules.toFixed(1)} J`;
}

export function usd(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "$0.00";
  return value < 0.01 ? `$${value.toPrecision(2)}` : `$${value.toFixed(2)}`;
}

// The unit that keeps a set of energies readable: [divisor from joules, unit name].
export function energyUnit(maxJoules) {
  if (maxJoules >= 3.6e6) return [3.6e6, "kWh"];
  if (maxJoules >= 3.6e3) return [3.6e3, "Wh"];
  return [1, "J"];
}

export function grams(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} kg CO2e` : `${value.toFixed(2)} g CO2e`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? esc(iso) : d.toLocaleString();
}

export function bytes(size) {
  if (size === null || size === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = size;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
