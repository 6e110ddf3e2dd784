// Thin client of the Lishui API: JSON or a thrown ApiError with a message fit for the banner.

const TIMEOUT_MS = 10_000;

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function detailOf(body) {
  if (!body || body.detail === undefined) return "";
  if (typeof body.detail === "string") return body.detail;
  // FastAPI validation errors: a list of {loc, msg}.
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg ?? JSON.stringify(d)).join("; ");
  return JSON.stringify(body.detail);
}

export async function getJson(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Accept: "application/json" },
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (err) {
    const why = err.name === "TimeoutError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "API unreachable";
    throw new ApiError(`${url.pathname}: ${why}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy error page, say): reported below by status, or as a bad answer.
  }
  if (!response.ok) {
    const detail = detailOf(body) || response.statusText;
    throw new ApiError(`${url.pathname}: ${response.status} ${detail}`.trim(), response.status);
  }
  if (body === null) throw new ApiError(`${url.pathname}: the answer is not JSON`, response.status);
  return body;
}

/** Runs ``task`` over ``items`` with at most ``limit`` in flight; results keep the order of items. */
export async function mapLimited(items, limit, task) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { ok: true, value: await task(items[i]) };
      } catch (error) {
        results[i] = { ok: false, error };
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
