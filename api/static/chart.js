// A line chart of one series as inline SVG: nice y ticks (zero always shown), time ticks every 10 min,
// gaps where buckets are missing, and a hover read-out.

import { formatClock, formatValue } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 720;
const HEIGHT = 260;
const M = { top: 14, right: 16, bottom: 28, left: 72 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 2.5 ? 2.5 : fraction <= 5 ? 5 : 10;
  return nice * power;
}

function yTicks(low, high, count = 5) {
  if (low === high) {
    const pad = Math.abs(low) || 1;
    low -= pad;
    high += pad;
  }
  const step = niceStep((high - low) / count);
  const first = Math.floor(low / step) * step;
  const last = Math.ceil(high / step) * step;
  const ticks = [];
  for (let v = first; v <= last + step / 2; v += step) ticks.push(Math.abs(v) < step / 1e6 ? 0 : v);
  return ticks;
}

/**
 * Draws ``series`` (an API Series: points of {ts, value}, start, end, unit, bucket) into ``container``.
 * ``bucketMs`` is the bucket width: consecutive points further apart than that leave a gap.
 */
export function renderChart(container, series, bucketMs) {
  container.replaceChildren();
  const points = series.points.map((p) => ({ t: Date.parse(p.ts), v: p.value }));
  if (points.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No data in the last hour.";
    container.append(empty);
    return;
  }
  const t0 = Date.parse(series.start);
  const t1 = Date.parse(series.end);
  const values = points.map((p) => p.v);
  const ticks = yTicks(Math.min(0, ...values), Math.max(0, ...values));
  const v0 = ticks[0];
  const v1 = ticks[ticks.length - 1];
  const plotW = WIDTH - M.left - M.right;
  const plotH = HEIGHT - M.top - M.bottom;
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => M.top + (1 - (v - v0) / (v1 - v0)) * plotH;

  const svg = el("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": `${series.metric} from ${series.start} to ${series.end}`,
    class: "chart-svg",
  });

  const grid = el("g", { class: "grid" });
  for (const tick of ticks) {
    grid.append(el("line", { x1: M.left, x2: WIDTH - M.right, y1: y(tick), y2: y(tick), class: tick === 0 ? "zero" : "" }));
    grid.append(el("text", { x: M.left - 8, y: y(tick), class: "y-label" }, formatValue(tick, series.unit)));
  }
  const tenMinutes = 10 * 60 * 1000;
  for (let t = Math.ceil(t0 / tenMinutes) * tenMinutes; t <= t1; t += tenMinutes) {
    grid.append(el("line", { x1: x(t), x2: x(t), y1: M.top, y2: HEIGHT - M.bottom, class: "vertical" }));
    grid.append(el("text", { x: x(t), y: HEIGHT - M.bottom + 18, class: "x-label" }, formatClock(t)));
  }
  svg.append(grid);

  // One path; a gap (missing buckets) starts a new sub-path.
  let line = "";
  let area = "";
  let runStart = null;
  let previous = null;
  const closeArea = () => {
    if (previous) area += `L${x(previous.t).toFixed(1)},${y(0).toFixed(1)}L${x(runStart.t).toFixed(1)},${y(0).toFixed(1)}Z`;
  };
  for (const p of points) {
    const px = x(p.t).toFixed(1);
    const py = y(p.v).toFixed(1);
    if (!previous || p.t - previous.t > bucketMs * 1.5) {
      closeArea();
      runStart = p;
      line += `M${px},${py}`;
      area += `M${px},${py}`;
    } else {
      line += `L${px},${py}`;
      area += `L${px},${py}`;
    }
    previous = p;
  }
  closeArea();
  svg.append(el("path", { d: area, class: "area" }));
  svg.append(el("path", { d: line, class: "line" }));
  if (points.length === 1) svg.append(el("circle", { cx: x(points[0].t), cy: y(points[0].v), r: 3, class: "dot" }));

  // Hover read-out: nearest point to the pointer.
  const cursor = el("g", { class: "cursor", visibility: "hidden" });
  const cursorLine = el("line", { y1: M.top, y2: HEIGHT - M.bottom });
  const cursorDot = el("circle", { r: 4 });
  const cursorText = el("text", { y: M.top + 12 });
  cursor.append(cursorLine, cursorDot, cursorText);
  svg.append(cursor);
  const overlay = el("rect", { x: M.left, y: M.top, width: plotW, height: plotH, class: "overlay" });
  overlay.addEventListener("pointermove", (event) => {
    const box = svg.getBoundingClientRect();
    const t = t0 + (((event.clientX - box.left) / box.width) * WIDTH - M.left) / plotW * (t1 - t0);
    let nearest = points[0];
    for (const p of points) if (Math.abs(p.t - t) < Math.abs(nearest.t - t)) nearest = p;
    const cx = x(nearest.t);
    cursorLine.setAttribute("x1", cx);
    cursorLine.setAttribute("x2", cx);
    cursorDot.setAttribute("cx", cx);
    cursorDot.setAttribute("cy", y(nearest.v));
    cursorText.textContent = `${formatClock(nearest.t)}  ${formatValue(nearest.v, series.unit)}`;
    const right = cx > M.left + plotW * 0.7;
    cursorText.setAttribute("x", right ? cx - 8 : cx + 8);
    cursorText.setAttribute("text-anchor", right ? "end" : "start");
    cursor.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("pointerleave", () => cursor.setAttribute("visibility", "hidden"));
  svg.append(overlay);

  container.append(svg);
}
