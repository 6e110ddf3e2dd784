// The dashboard: towns and sites, the device table with latest values, and one device's last hour.
// Everything refreshes every 5 s; failures show in the banner until the next successful load.

import { ApiError, getJson, mapLimited } from "./api.js";
import { renderChart } from "./chart.js";
import { formatAgo, formatTime, formatValue, metricLabel } from "./format.js";

const REFRESH_MS = 5_000;
const PAGE = 1000; // the API's largest page
const LATEST_CONCURRENCY = 6;
const STALE_MS = 15 * 60 * 1000;
const KEY_METRICS = ["active_power_w", "soc_pct", "reservoir_level_m"];
const SERIES = { metric: "active_power_w", bucket: "1m", bucketMs: 60_000, spanMs: 3_600_000 };

const state = {
  metrics: new Map(), // name -> {unit, kind, description}
  towns: [],
  sites: [],
  devices: [],
  latest: new Map(), // device key -> Map(metric -> {value, unit, ts})
  selected: null,
  scrollToDetail: false,
  siteFilter: null,
  search: "",
  lastSuccess: null,
};

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

// ---- errors -------------------------------------------------------------------------------------

const errors = new Map(); // source -> message

function report(source, error) {
  if (error) {
    errors.set(source, error instanceof ApiError ? error.message : String(error));
    if (!(error instanceof ApiError)) console.error(error);
  } else {
    errors.delete(source);
  }
  const banner = $("banner");
  banner.hidden = errors.size === 0;
  banner.replaceChildren(
    h("strong", {}, errors.size === 1 ? "Problem loading data" : `${errors.size} problems loading data`),
    h("ul", {}, [...errors.values()].map((message) => h("li", {}, message))),
  );
}

async function attempt(source, task) {
  try {
    const result = await task();
    report(source, null);
    return result;
  } catch (error) {
    report(source, error);
    return undefined;
  }
}

// ---- loading ------------------------------------------------------------------------------------

async function getAll(path, params = {}) {
  const rows = [];
  for (let offset = 0; ; offset += PAGE) {
    const page = await getJson(path, { ...params, limit: PAGE, offset });
    rows.push(...page);
    if (page.length < PAGE) return rows;
  }
}

// The catalogue and the towns rarely change: loaded until they arrive, then kept.
async function loadCatalogues() {
  const [metrics, towns] = await Promise.all([
    state.metrics.size ? null : attempt("metrics", () => getJson("/api/v1/metrics")),
    state.towns.length ? null : attempt("towns", () => getJson("/api/v1/towns")),
  ]);
  if (metrics) state.metrics = new Map(metrics.map((m) => [m.name, m]));
  if (towns) state.towns = towns;
}

async function loadRegistry() {
  const [sites, devices] = await Promise.all([
    attempt("sites", () => getAll("/api/v1/sites")),
    attempt("devices", () => getAll("/api/v1/devices")),
  ]);
  if (sites) state.sites = sites;
  if (devices) state.devices = devices;
}

async function loadLatest() {
  const keys = state.devices.map((d) => d.key);
  const results = await mapLimited(keys, LATEST_CONCURRENCY, (key) =>
    getJson(`/api/v1/devices/${encodeURIComponent(key)}/latest`),
  );
  const failures = [];
  results.forEach((result, i) => {
    if (result.ok) state.latest.set(keys[i], new Map(result.value.values.map((v) => [v.metric, v])));
    else failures.push(result.error);
  });
  report(
    "latest",
    failures.length === 0
      ? null
      : new ApiError(`Latest values of ${failures.length} of ${keys.length} devices: ${failures[0].message}`),
  );
}

async function loadDetail() {
  const key = state.selected;
  if (!key) return;
  const path = `/api/v1/devices/${encodeURIComponent(key)}`;
  const end = new Date();
  const start = new Date(end.getTime() - SERIES.spanMs);
  const result = await attempt("detail", () =>
    Promise.all([
      getJson(path),
      getJson(`${path}/latest`),
      getJson(`${path}/series`, {
        metric: SERIES.metric,
        bucket: SERIES.bucket,
        start: start.toISOString(),
        end: end.toISOString(),
      }),
    ]),
  );
  if (result && state.selected === key) {
    const [device, latest, series] = result;
    state.latest.set(key, new Map(latest.values.map((v) => [v.metric, v])));
    renderDetail(device, series);
    if (state.scrollToDetail) $("detail").scrollIntoView({ behavior: "smooth", block: "start" });
    state.scrollToDetail = false;
  }
}

// ---- rendering ----------------------------------------------------------------------------------

function statusOf(device) {
  return device.status ?? "unknown";
}

function statusPill(device) {
  const status = statusOf(device);
  const title = [device.status_reason, device.status_at && `since ${formatTime(device.status_at)}`]
    .filter(Boolean)
    .join(", ");
  return h("span", { class: `status status-${status}`, title: title || undefined }, status);
}

function unitOf(metric, fallback) {
  return state.metrics.get(metric)?.unit ?? fallback ?? "";
}

function valueCell(deviceKey, metric) {
  const reading = state.latest.get(deviceKey)?.get(metric);
  if (!reading) return h("td", { class: "num muted" }, "–");
  const stale = Date.now() - Date.parse(reading.ts) > STALE_MS;
  return h(
    "td",
    { class: stale ? "num stale" : "num", title: `${formatTime(reading.ts)}${stale ? " (stale)" : ""}` },
    formatValue(reading.value, unitOf(metric, reading.unit)),
  );
}

function renderSummary() {
  const counts = {};
  for (const d of state.devices) counts[statusOf(d)] = (counts[statusOf(d)] ?? 0) + 1;
  const parts = ["online", "offline", "fault", "unknown"]
    .filter((s) => counts[s])
    .map((s) => h("span", { class: `count status-${s}` }, `${counts[s]} ${s}`));
  $("summary").replaceChildren(
    `${state.towns.length} towns · ${state.sites.length} sites · ${state.devices.length} devices`,
    parts.length ? ": " : "",
    ...parts.flatMap((p, i) => (i ? [", ", p] : [p])),
  );
}

function renderTowns() {
  const devicesBySite = new Map();
  for (const d of state.devices) {
    if (!devicesBySite.has(d.site)) devicesBySite.set(d.site, []);
    devicesBySite.get(d.site).push(d);
  }
  const sitesByTown = new Map();
  for (const s of state.sites) {
    const town = s.town ?? "";
    if (!sitesByTown.has(town)) sitesByTown.set(town, []);
    sitesByTown.get(town).push(s);
  }
  const towns = [...state.towns];
  if (sitesByTown.has("")) towns.push({ key: "", name_zh: "", name_en: "No town" });

  const cards = [];
  const without = [];
  for (const town of towns) {
    const sites = sitesByTown.get(town.key) ?? [];
    if (sites.length === 0) {
      without.push(town.name_zh || town.name_en);
      continue;
    }
    const devices = sites.flatMap((s) => devicesBySite.get(s.key) ?? []);
    const bar = h(
      "div",
      { class: "bar", title: "online / offline / fault / unknown" },
      ["online", "offline", "fault", "unknown"].map((status) => {
        const n = devices.filter((d) => statusOf(d) === status).length;
        return n ? h("span", { class: `status-${status}`, style: `flex-grow: ${n}` }) : null;
      }),
    );
    cards.push(
      h(
        "article",
        { class: "town" },
        h("h3", {}, town.name_zh, " ", h("span", { class: "muted" }, town.name_en)),
        h("p", { class: "meta" }, `${sites.length} site${sites.length === 1 ? "" : "s"} · ${devices.length} devices`),
        bar,
        h(
          "ul",
          { class: "sites" },
          sites.map((s) =>
            h(
              "li",
              {},
              h(
                "button",
                {
                  type: "button",
                  class: state.siteFilter === s.key ? "site active" : "site",
                  title: `${s.key} · ${s.kind} · tier ${s.tier}${s.tenant ? ` · ${s.tenant}` : ""}`,
                  onclick: () => setSiteFilter(state.siteFilter === s.key ? null : s.key),
                },
                s.name,
                h("span", { class: "muted" }, ` ${s.device_count}`),
              ),
            ),
          ),
        ),
      ),
    );
  }
  if (without.length) cards.push(h("p", { class: "muted no-sites" }, `No sites yet: ${without.join(", ")}`));
  $("towns").replaceChildren(...cards);
}

function visibleDevices() {
  const needle = state.search.trim().toLowerCase();
  return state.devices.filter(
    (d) =>
      (!state.siteFilter || d.site === state.siteFilter) &&
      (!needle || [d.key, d.site, d.kind].some((text) => text.toLowerCase().includes(needle))),
  );
}

function renderDevices() {
  const now = Date.now();
  const rows = visibleDevices().map((d) =>
    h(
      "tr",
      {
        class: d.key === state.selected ? "selected" : undefined,
        tabindex: 0,
        "aria-selected": d.key === state.selected ? "true" : "false",
        onclick: () => select(d.key),
        onkeydown: (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            select(d.key);
          }
        },
      },
      h("td", { class: "key" }, d.key),
      h("td", {}, d.site),
      h("td", {}, d.kind),
      h("td", {}, statusPill(d)),
      h("td", { title: formatTime(d.last_seen) }, formatAgo(d.last_seen, now)),
      h("td", { class: "num" }, d.rated_power_w === null ? "–" : formatValue(d.rated_power_w, unitOf("rated_power_w", "W"))),
      KEY_METRICS.map((metric) => valueCell(d.key, metric)),
    ),
  );
  $("device-rows").replaceChildren(...rows);
  $("devices-empty").hidden = rows.length > 0;
  $("devices-empty").textContent = state.devices.length
    ? "No device matches the filter."
    : errors.has("devices")
      ? "Could not load the devices (see the message above)."
      : "No devices.";

  const chip = $("site-filter");
  chip.hidden = !state.siteFilter;
  if (state.siteFilter) {
    chip.replaceChildren(
      `Site: ${state.siteFilter} `,
      h("button", { type: "button", "aria-label": "Clear site filter", onclick: () => setSiteFilter(null) }, "×"),
    );
  }
}

function renderDetail(device, series) {
  $("detail").hidden = false;
  $("detail-title").replaceChildren(device.key, " ", statusPill(device));
  const meta = [
    `site ${device.site}`,
    device.kind,
    [device.vendor, device.model].filter(Boolean).join(" "),
    device.rated_power_w !== null && `rated ${formatValue(device.rated_power_w, unitOf("rated_power_w", "W"))}`,
    device.lifecycle,
    device.status_reason,
    `last seen ${formatAgo(device.last_seen)}`,
  ];
  $("detail-meta").textContent = meta.filter(Boolean).join(" · ");
  renderChart($("chart"), series, SERIES.bucketMs);

  const values = [...(state.latest.get(device.key)?.values() ?? [])];
  const list = $("latest");
  if (values.length === 0) {
    list.replaceChildren(h("p", { class: "empty" }, "No readings yet."));
    return;
  }
  const now = Date.now();
  list.replaceChildren(
    ...values.flatMap((v) => {
      const metric = state.metrics.get(v.metric);
      const stale = now - Date.parse(v.ts) > STALE_MS;
      return [
        h("dt", { title: metric ? `${v.metric}: ${metric.description}` : v.metric }, metricLabel(v.metric)),
        h(
          "dd",
          { class: stale ? "stale" : undefined, title: formatTime(v.ts) },
          formatValue(v.value, unitOf(v.metric, v.unit)),
          h("span", { class: "ago" }, formatAgo(v.ts, now)),
        ),
      ];
    }),
  );
}

function renderAll() {
  renderSummary();
  renderTowns();
  renderDevices();
}

// ---- interaction --------------------------------------------------------------------------------

function selectedFromHash() {
  const match = /^#device=(.+)$/.exec(window.location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function select(key) {
  if (key === state.selected) return;
  window.location.hash = key ? `device=${encodeURIComponent(key)}` : "";
}

function onHashChange() {
  state.selected = selectedFromHash();
  renderDevices();
  if (!state.selected) {
    $("detail").hidden = true;
    report("detail", null);
    return;
  }
  $("detail").hidden = false;
  $("detail-title").textContent = state.selected;
  $("detail-meta").textContent = "Loading…";
  $("chart").replaceChildren();
  $("latest").replaceChildren();
  state.scrollToDetail = true; // once it is drawn, at its full height
  loadDetail();
}

function setSiteFilter(site) {
  state.siteFilter = site;
  renderTowns();
  renderDevices();
}

// ---- refresh loop -------------------------------------------------------------------------------

async function refresh() {
  await Promise.all([loadCatalogues(), loadRegistry()]);
  renderAll(); // the registry first: the table appears before the latest values arrive
  await Promise.all([loadLatest(), loadDetail()]);
  renderDevices();
  if (errors.size === 0) state.lastSuccess = new Date();
  const updated = $("updated");
  updated.classList.toggle("failing", errors.size > 0);
  updated.textContent = state.lastSuccess
    ? `Updated ${state.lastSuccess.toLocaleTimeString()}${errors.size ? " (latest refresh failed)" : ""}`
    : "Not loaded yet";
}

async function loop() {
  if (!document.hidden) {
    try {
      await refresh();
      report("dashboard", null);
    } catch (error) {
      report("dashboard", error);
    }
  }
  window.setTimeout(loop, REFRESH_MS);
}

$("search").addEventListener("input", (event) => {
  state.search = event.target.value;
  renderDevices();
});
$("detail-close").addEventListener("click", () => select(null));
window.addEventListener("hashchange", onHashChange);
state.selected = selectedFromHash();
loop();
