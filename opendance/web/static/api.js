// The one place that talks to the server. Every call is a call of the public API, with the key
// the user typed in (kept in this browser's localStorage, sent only to this page's own origin).

const KEY_STORE = "opendance.apiKey";

export class ApiError extends Error {
  // The API's one error shape: {"error": {"message", "type", "param", "code"}}.
  constructor(status, body, text) {
    const err = (body && body.error) || {};
    super(err.message || text || `HTTP ${status}`);
    this.status = status;
    this.param = err.param ?? null;
    this.code = err.code ?? null;
    this.type = err.type ?? null;
  }
}

let key = localStorage.getItem(KEY_STORE) || "";

export function apiKey() {
  return key;
}

export function setApiKey(value) {
  key = value;
  if (value) localStorage.setItem(KEY_STORE, value);
  else localStorage.removeItem(KEY_STORE);
}

// Paths are relative ("v1/models"), so the page also works behind a proxy under a sub-path.
export async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = {};
  if (auth && key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, null, `the server could not be reached (${exc.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data, text);
  return data;
}

// Whether the server is open: GET /v1/models without a key answers 200 on an open server and
// 401 when the server has keys (the API's own rule, so no extra endpoint is needed).
export async function probe() {
  try {
    const models = await api("v1/models", { auth: false });
    return { open: true, models: models.data };
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) return { open: false, models: null };
    throw exc;
  }
}
