// Family page: is my relative OK? A plain status, a week of heart rate and activity, and their calls,
// each of which opens on what the hotline did (alarm, call taken, help sent, arrived, handed over).
// The API decides what a family user may see (404 for anyone else's relative); this page only asks.

import { api, ApiError, fill, h, listOf, live, login, logout, session, whoami } from "/common/api.js";
import { barChart, lineChart } from "/common/charts.js";
import { fmtDateTime, fmtSeconds, fmtTime, langButton, responderKind, t, translatePage } from "/common/i18n.js";

const $ = (sel) => document.querySelector(sel);
let me = null;
// Calls whose timeline the reader opened: they stay open (and up to date) through every refresh.
const openCalls = new Set();
let feed = null; // the live feed (SSE): the API sends a family user their relatives' call changes only
let renderSeq = 0;
let pending = null;

function pick(o, ...keys) {
  for (const k of keys) if (o?.[k] !== undefined && o[k] !== null) return o[k];
  return null;
}

/** The API's status word → one of three levels a worried relative can read at a glance. */
export function level(status) {
  const raw = String(pick(status, "level", "status", "state") ?? "ok").toLowerCase();
  if (["emergency", "alarm", "critical", "p1"].includes(raw)) return "emergency";
  if (["attention", "warning", "warn", "check"].includes(raw)) return "attention";
  return "ok";
}

function wanted() {
  const m = location.hash.match(/resident=(\d+)/);
  return m ? Number(m[1]) : null;
}

async function residentIds() {
  const ids = listOf(me.resident_ids);
  if (ids.length || me.resident_ids) return ids;
  return listOf(await api("GET", "/residents").catch(() => []), "residents").map((r) => r.id);
}

async function render() {
  const main = $("#residents");
  main.classList.remove("hidden");
  let ids = await residentIds();
  const only = wanted();
  if (only !== null) ids = [only];
  if (!ids.length) {
    fill(main, h("p", { class: "muted", testid: "no-residents" }, t("no_residents")));
    return;
  }
  const all = await residentIds();
  const nav =
    all.length > 1 || only !== null
      ? h("nav", { class: "tabs-rel" }, h("a", { href: "#" }, "⌂"), ...all.map((id) => h("a", { href: `#resident=${id}` }, `#${id}`)))
      : null;
  // Built off screen and swapped in whole: a refresh (a live event, the minutely timer) does not blank the
  // page, and only the newest of overlapping refreshes may paint.
  const seq = ++renderSeq;
  const sections = ids.map(() => h("section", { class: "relative" }, "…"));
  if (!main.querySelector("section.relative")) fill(main, nav, ...sections);
  await Promise.all(ids.map((id, i) => renderResident(id, sections[i])));
  if (seq === renderSeq) fill(main, nav, ...sections);
}

/** Re-read the page when the hotline changes a relative's call: "help sent" shows within a second. */
function watch() {
  feed?.close();
  feed = live(
    (ev) => {
      if (ev?.resident_id === null || ev?.resident_id === undefined) return;
      clearTimeout(pending);
      pending = setTimeout(() => me && render(), 300);
    },
    (state) => state === "revoked" && showLogin(),
  );
}

async function renderResident(id, section) {
  let resident;
  try {
    resident = await api("GET", `/residents/${id}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return showLogin();
    fill(section, h("div", { class: "card error", testid: "not-available" }, `${t("not_available")} (#${id})`));
    return;
  }
  section.dataset.testid = "relative";
  section.dataset.residentId = String(id);
  const to = Date.now();
  const from = to - 7 * 24 * 3600_000;
  const range = `from=${encodeURIComponent(new Date(from).toISOString())}&to=${encodeURIComponent(new Date(to).toISOString())}`;
  const get = (p, fallback) => api("GET", p).catch(() => fallback);
  const [status, vitals, activity, calls] = await Promise.all([
    get(`/residents/${id}/status`, {}),
    get(`/residents/${id}/vitals?${range}&bucket=1h`, []),
    get(`/residents/${id}/activity?days=7`, []),
    api("GET", `/residents/${id}/calls`).catch(() => get(`/calls?resident_id=${id}`, [])),
  ]);
  const lvl = level(status);
  const lastSeen = pick(status, "last_seen_at", "last_seen", "last_telemetry_at");
  const reason = listOf(status?.reasons).join(", ") || pick(status, "reason", "summary");
  const v = listOf(vitals, "vitals", "samples");
  const ms = (p) => new Date(pick(p, "ts", "bucket", "t", "at")).getTime();
  const act = listOf(activity, "days", "activity").map((d) => {
    const day = pick(d, "day", "date", "bucket");
    const dt = day ? new Date(day) : null;
    return {
      label: dt && !Number.isNaN(dt.getTime()) ? `${dt.getMonth() + 1}/${dt.getDate()}` : String(day ?? ""),
      value: Number(pick(d, "steps", "steps_max", "active_minutes", "motion", "motion_n", "value") ?? 0),
    };
  });
  const callList = listOf(calls, "calls");
  fill(section,
    h("h2", { testid: "relative-name" }, resident.name),
    h(
      "div",
      { class: `status ${lvl}`, testid: "relative-status", "data-level": lvl },
      h("span", { class: "dot" }),
      h(
        "div",
        {},
        t(`status_${lvl}`),
        h(
          "small",
          { testid: "relative-status-detail" },
          [
            reason,
            status?.heart_rate?.value ? `${t("hr")} ${status.heart_rate.value}` : null,
            status?.place && status.place !== "unknown" ? `${t(`place_${status.place}`)}${status.room ? ` (${status.room})` : ""}` : null,
            lastSeen ? `${t("last_seen")} ${fmtDateTime(lastSeen)}` : null,
          ]
            .filter(Boolean)
            .join(" · "),
        ),
      ),
    ),
    h(
      "div",
      { class: "card" },
      h("h3", {}, t("hr7")),
      lineChart({
        series: [{ name: t("hr"), color: "#ff6961", min: 50, max: 110, points: v.map((p) => [ms(p), pick(p, "hr", "hr_avg", "hr_mean")]) }],
        from,
        to,
        days: true,
        width: 360,
        height: 170,
        testid: "family-hr-chart",
        label: t("hr7"),
        noData: t("no_data"),
      }),
    ),
    h("div", { class: "card" }, h("h3", {}, t("activity7")), barChart({ bars: act, testid: "family-activity", label: t("activity7"), noData: t("no_data") })),
    h(
      "div",
      { class: "card", testid: "family-calls" },
      h("h3", {}, t("calls_recent")),
      callList.length
        ? h(
            "ul",
            { class: "plain calls" },
            ...callList.slice(0, 10).map((c) => h("li", {}, callItem(c))),
          )
        : h("p", { class: "muted" }, t("no_calls")),
    ),
  );
}

/** One call: its headline, opening on the rescue timeline (fetched when opened; the family summary). */
function callItem(c) {
  const body = h("div", { class: "timeline", testid: "family-timeline" }, h("p", { class: "muted" }, "…"));
  const item = h(
    "details",
    { testid: "family-call", "data-status": c.status, "data-call-id": String(c.id) },
    h(
      "summary",
      {},
      h("span", { class: "badge" }, t(`status_${c.status}`)),
      ` ${c.title || c.reason || ""} `,
      h("span", { class: "muted" }, fmtDateTime(c.created_at || c.event_at)),
    ),
    body,
  );
  let loaded = false;
  const load = async () => {
    if (loaded) return;
    loaded = true;
    try {
      fill(body, timelineView(await api("GET", `/welfare/calls/${c.id}/timeline`)));
    } catch {
      loaded = false;
      fill(body, h("p", { class: "muted" }, t("not_available")));
    }
  };
  item.addEventListener("toggle", () => {
    if (item.open) {
      openCalls.add(c.id);
      load();
    } else openCalls.delete(c.id);
  });
  if (openCalls.has(c.id)) {
    item.open = true;
    load();
  }
  return item;
}

function stepLabel(s) {
  if (s.kind === "handover") return t(`ho_${s.handover}`);
  const label = t(`tl_${s.kind}`);
  if (s.kind === "dispatched" || s.kind === "arrived") {
    return `${label} (${responderKind(s.responder_kind)})`;
  }
  return label;
}

/** Steps in time order, each with its clock time and how long after the alarm it came. */
export function timelineView(tl) {
  const steps = listOf(tl, "steps");
  const alarm = steps.find((s) => s.kind === "alarm");
  const t0 = alarm ? new Date(alarm.at).getTime() : null;
  if (!steps.length) return h("p", { class: "muted" }, t("no_data"));
  return h(
    "ol",
    { class: "plain steps", testid: "timeline-steps" },
    ...steps.map((s) =>
      h(
        "li",
        { testid: "timeline-step", "data-kind": s.kind },
        h("span", { class: "when" }, fmtTime(s.at)),
        h(
          "span",
          {},
          h("span", { class: "what" }, stepLabel(s)),
          t0 !== null && s.kind !== "alarm"
            ? h("span", { class: "muted after" }, ` +${fmtSeconds((new Date(s.at).getTime() - t0) / 1000)}`)
            : null,
        ),
      ),
    ),
  );
}

function showLogin() {
  feed?.close();
  feed = null;
  $("#residents").classList.add("hidden");
  $("#logout").classList.add("hidden");
  $("#login").classList.remove("hidden");
}

async function start() {
  try {
    me = await whoami();
  } catch {
    return showLogin();
  }
  if (me.role !== "family") {
    location.href = "/console/";
    return;
  }
  $("#login").classList.add("hidden");
  $("#logout").classList.remove("hidden");
  document.body.dataset.user = me.username;
  await render();
  watch();
}

document.addEventListener("DOMContentLoaded", () => {
  translatePage();
  $("#lang-slot").append(langButton(() => me && render()));
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    $('[data-testid="login-error"]').classList.add("hidden");
    try {
      await login(String(f.get("username")), String(f.get("password")));
    } catch {
      $('[data-testid="login-error"]').classList.remove("hidden");
      return;
    }
    ev.target.reset();
    start();
  });
  $("#logout").addEventListener("click", () => {
    logout();
    showLogin();
  });
  window.addEventListener("hashchange", () => me && render());
  setInterval(() => me && !document.hidden && render(), 60_000);
  if (session()) start();
  else showLogin();
});
