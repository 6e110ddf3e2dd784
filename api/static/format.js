// Formatting of values, units and times for display.

const SI_UNITS = new Set(["W", "Wh", "VA", "var"]);
const PREFIXES = [
  [1e9, "G"],
  [1e6, "M"],
  [1e3, "k"],
];

function number(value, maxDigits) {
  return value.toLocaleString(undefined, { maximumFractionDigits: maxDigits });
}

function digitsFor(abs, unit) {
  if (abs >= 1000) return 0;
  if (abs >= 100 || unit === "%") return 1;
  return 2;
}

/** "12.3 kW", "87.5 %", "142.35 m"; power and energy scaled to k/M/G; unit "1" means dimensionless. */
export function formatValue(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  let scaled = value;
  let shown = unit && unit !== "1" ? unit : "";
  if (SI_UNITS.has(unit)) {
    const found = PREFIXES.find(([factor]) => Math.abs(value) >= factor);
    if (found) {
      scaled = value / found[0];
      shown = found[1] + unit;
    }
  }
  const text = number(scaled, digitsFor(Math.abs(scaled), unit));
  if (!shown) return text;
  return shown === "%" ? `${text} %` : `${text} ${shown}`;
}

/** "5 s ago", "3 min ago", "2 h ago", "4 d ago"; "never" when missing. */
export function formatAgo(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function formatClock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const SUFFIX = /_(w|wh|va|var|v|a|hz|pct|c|m|m3s|wm2)$/;
const WORDS = { soc: "SoC", soh: "SoH", dc: "DC", l1: "L1", l2: "L2", l3: "L3" };

/** Catalogue names are snake_case with a unit suffix: "reservoir_level_m" -> "Reservoir level". */
export function metricLabel(name) {
  const words = name.replace(SUFFIX, "").split("_").map((w) => WORDS[w] ?? w);
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}
