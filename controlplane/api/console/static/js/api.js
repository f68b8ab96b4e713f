// The API as the console calls it: same origin, the user's bearer token, JSON in and out.
// The token lives in this tab's session storage only: closing the tab forgets it.

const TOKEN_KEY = "controlplane.token";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  save: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An answer other than 2xx, with the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let unauthorized = () => {};

/** Called when a request is refused for its token (revoked, unknown): the console logs out. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function headersFor(token, hasBody) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (hasBody) headers["Content-Type"] = "application/json";
  return headers;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.code || "error", error.message, error.details);
  }
  // FastAPI's own validation answers: {"detail": [...]}
  if (body && Array.isArray(body.detail)) {
    const first = body.detail[0] || {};
    const where = Array.isArray(first.loc) ? first.loc.slice(1).join(".") : "";
    return new ApiError(response.status, "invalid_request", `${where ? where + ": " : ""}${first.msg || "invalid request"}`, body.detail);
  }
  return new ApiError(response.status, "http_" + response.status, `${response.status} ${response.statusText}`);
}

/** Call the API; resolves to the parsed JSON (null for an empty answer), rejects with ApiError. */
export async function api(path, { method = "GET", body, token, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headersFor(token ?? session.token(), body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && token === undefined) unauthorized(error);
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Like api() but a 404 resolves to null (an optional resource: a signature, a golden set). */
export async function apiOptional(path, options) {
  try {
    return await api(path, options);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/** Path segment, encoded: model and alias names go into URLs only through this. */
export const seg = (value) => encodeURIComponent(String(value));

/** A query string from the defined, non-empty values of `params`. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Follow the audit log's server-sent events (GET /v1/events/stream) with the bearer token.
 * EventSource cannot send an Authorization header, so the stream is read with fetch.
 * Reconnects after a drop with Last-Event-ID; returns a function that stops it.
 */
export function followEvents(onEvent, { after } = {}) {
  const controller = new AbortController();
  let lastId = after;
  let stopped = false;
  async function run() {
    while (!stopped) {
      try {
        const headers = headersFor(session.token(), false);
        headers.Accept = "text/event-stream";
        if (lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
        const response = await fetch("/v1/events/stream", { headers, signal: controller.signal, cache: "no-store" });
        if (response.status === 401) {
          unauthorized(await failure(response));
          return;
        }
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
            if (!data) continue;
            const event = JSON.parse(data);
            lastId = event.id;
            onEvent(event);
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}

/** /healthz?model=NAME: the answer whether ready (200) or not (503); rejects on other statuses. */
export async function modelHealth(model) {
  const response = await fetch(`/healthz${query({ model })}`, {
    headers: headersFor(session.token(), false),
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 200 || response.status === 503) return response.json();
  throw await failure(response);
}
