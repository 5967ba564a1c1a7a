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
  if (value >= 1000) return `${(value / 1000).toFixed(2)} kg CO2e`;
  // below a gram, an SI prefix keeps the figure readable instead of "0.00 g"
  return value >= 1 || value === 0 ? `${value.toFixed(2)} g CO2e` : `${si(value, "g")} CO2e`;
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

// SI prefixes, largest first: [scale, prefix].
const SI_PREFIXES = [
  [1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"], [1, ""],
  [1e-3, "m"], [1e-6, "µ"], [1e-9, "n"], [1e-12, "p"],
];

function siScale(largest) {
  if (!(largest > 0)) return [1, ""];
  return SI_PREFIXES.find(([scale]) => largest >= scale) || SI_PREFIXES[SI_PREFIXES.length - 1];
}

// Tick labels for one axis: one SI prefix for all of them (from the largest tick), and the
// fewest decimals that write every tick exactly (so no two ticks share a label).
export function siTicks(ticks) {
  const finite = ticks.filter((t) => t !== null && Number.isFinite(t));
  const [scale, prefix] = siScale(Math.max(0, ...finite.map(Math.abs)));
  const scaled = ticks.map((t) => (t === null || !Number.isFinite(t) ? null : t / scale));
  const exact = (decimals) => scaled.every((v) =>
    v === null || Math.abs(Number(v.toFixed(decimals)) - v) <= 1e-9 * Math.max(1, Math.abs(v)));
  let decimals = 0;
  while (decimals < 6 && !exact(decimals)) decimals += 1;
  return scaled.map((v) => {
    if (v === null) return "";
    if (v === 0) return "0";
    return `${v.toFixed(decimals)}${prefix}`;
  });
}

// One figure with an SI prefix and 3 significant digits: si(1234567, "FLOP/s") is
// "1.23 MFLOP/s", si(1480) is "1.48k".
export function si(value, unit = "") {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const [scale, prefix] = siScale(Math.abs(value));
  const figure = Number((value / scale).toPrecision(3));
  return unit ? `${figure} ${prefix}${unit}` : `${figure}${prefix}`;
}
