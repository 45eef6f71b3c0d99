// Talking to the CareWatch API: tokens, JSON fetches with one silent refresh, and the live feed.
// Tokens live in sessionStorage so closing the tab logs out (shared PCs in the call centre).

const BASE = "/api/v1";
const KEY = "carewatch.session";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function store(tokens) {
  const s = {
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    user: tokens.user || session()?.user || null,
    expires_at: Date.now() + (tokens.expires_in || 900) * 1000,
  };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

export function logout() {
  sessionStorage.removeItem(KEY);
}

export async function login(username, password) {
  const body = new URLSearchParams({ username, password });
  const res = await fetch(`${BASE}/auth/token`, { method: "POST", body });
  if (!res.ok) throw new ApiError(res.status, await detailOf(res));
  const s = store(await res.json());
  if (!s.user) {
    s.user = await whoami();
    sessionStorage.setItem(KEY, JSON.stringify(s));
  }
  return s;
}

/** The signed-in user ({id, username, role, resident_ids}); the API serves it at /auth/me. */
export async function whoami() {
  try {
    return await api("GET", "/auth/me");
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return api("GET", "/me");
    throw e;
  }
}

let refreshing = null;

/** Refresh once even when several requests hit an expired token at the same moment. */
export async function refresh() {
  const s = session();
  if (!s?.refresh_token) throw new ApiError(401, "not logged in");
  refreshing ??= (async () => {
    try {
      const res = await fetch(`${BASE}/auth/refresh`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: s.refresh_token }),
      });
      if (!res.ok) {
        logout();
        throw new ApiError(res.status, await detailOf(res));
      }
      return store(await res.json());
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function detailOf(res) {
  try {
    const j = await res.json();
    return j.detail ?? j;
  } catch {
    return res.statusText;
  }
}

/** JSON request with the bearer token; refreshes and retries once on 401. */
export async function api(method, path, body, retry = true) {
  let s = session();
  if (s && s.expires_at - Date.now() < 30_000 && s.refresh_token) {
    try {
      s = await refresh();
    } catch {
      /* fall through: the request below reports the 401 */
    }
  }
  const headers = { Accept: "application/json" };
  if (s?.access_token) headers.Authorization = `Bearer ${s.access_token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(BASE + path, init);
  if (res.status === 401 && retry && s?.refresh_token) {
    await refresh();
    return api(method, path, body, false);
  }
  if (!res.ok) throw new ApiError(res.status, await detailOf(res));
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/**
 * The live feed (SSE). EventSource resumes by itself with Last-Event-ID after a network blip; when the
 * server refuses (token expired) it closes, so we refresh the token and reopen from the last id seen.
 */
const KINDS = ["call.created", "call.updated", "call.escalated", "call.attached", "call.resolved", "call.reopened"];

export function live(onEvent, onState = () => {}) {
  let es = null;
  let stopped = false;
  let timer = null;

  const open = () => {
    const s = session();
    if (!s || stopped) return;
    // A fresh EventSource cannot send Last-Event-ID; the page re-reads the queue on "open" instead.
    const q = new URLSearchParams({ access_token: s.access_token });
    es = new EventSource(`${BASE}/live?${q}`);
    es.onopen = () => onState("open");
    es.onmessage = (m) => handle(m);
    // Servers may name their events (event: call.updated); listen to the common ones too.
    // The API names each event by its kind (event: call.updated); EventSource has no wildcard.
    for (const k of KINDS) es.addEventListener(k, (m) => handle(m));
    // Token revoked (user disabled, password reset): stop, the page falls back to sign-in.
    es.addEventListener("revoked", () => {
      es.close();
      es = null;
      onState("revoked");
    });
    es.onerror = () => {
      onState("error");
      if (es.readyState === EventSource.CLOSED) {
        es = null;
        clearTimeout(timer);
        timer = setTimeout(async () => {
          try {
            await refresh();
          } catch {
            /* retry later */
          }
          open();
        }, 2000);
      }
    };
  };

  const handle = (m) => {
    let data = null;
    try {
      data = JSON.parse(m.data);
    } catch {
      data = { kind: m.type, raw: m.data };
    }
    if (data && !data.kind && m.type !== "message") data.kind = m.type;
    onEvent(data || {});
  };

  open();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      es?.close();
    },
    reopen() {
      es?.close();
      open();
    },
  };
}

/** Small DOM helper: h("div", {class: "x", onclick}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** replaceChildren that skips null/false (the DOM would print them as "null"/"false"). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function ageFrom(dob, now = new Date()) {
  if (!dob) return null;
  const d = new Date(dob);
  let age = now.getFullYear() - d.getFullYear();
  const m = now.getMonth() - d.getMonth();
  if (m < 0 || (m === 0 && now.getDate() < d.getDate())) age -= 1;
  return age;
}

/** Accept a list or an envelope ({items: [...]}, {points: [...]}) from endpoints not yet settled. */
export function listOf(x, ...keys) {
  if (Array.isArray(x)) return x;
  for (const k of [...keys, "items", "points", "data", "results"]) if (Array.isArray(x?.[k])) return x[k];
  return [];
}
