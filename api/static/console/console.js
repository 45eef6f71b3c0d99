// Operator console: the live queue, the open call with the resident card, and the supervisor view.
// Plain ES module, no framework: every change comes from the live feed and is re-read from the API,
// so what an operator sees is what the database says, not what this page guessed.

import { api, ApiError, ageFrom, fill, h, listOf, live, login, logout, session, whoami } from "/common/api.js";
import { barChart, lineChart, timeline, trailPlot } from "/common/charts.js";
import { fmtDateTime, fmtSeconds, fmtTime, langButton, responderKind, t, translatePage } from "/common/i18n.js";

const DISPATCH_KINDS = ["ambulance", "care_worker", "family", "property_manager", "police", "other"];
// hotline.lifecycle.OUTCOMES
const OUTCOMES = ["genuine_emergency", "resident_ok", "false_alarm", "no_answer_help_sent", "technical_fault", "cancelled_by_wearer"];
const ATTEMPT_RESULTS = ["reached", "no_answer", "busy", "declined"];

const $ = (sel) => document.querySelector(sel);
const state = {
  me: null,
  calls: [],
  known: null, // ids seen so far; null until the first load so a reload does not ring for old calls
  selected: null,
  detail: null,
  resident: null,
  feed: null,
  tab: "queue",
  beeps: 0,
};

// ---------------------------------------------------------------- sound

let audio = null;

/** WebAudio needs a user gesture before it may play: the login click provides one. */
function unlockAudio() {
  try {
    audio ??= new (window.AudioContext || window.webkitAudioContext)();
    if (audio.state === "suspended") audio.resume();
  } catch {
    audio = null;
  }
}

function beep() {
  state.beeps += 1;
  document.body.dataset.beeps = String(state.beeps);
  if (!audio) return;
  const t0 = audio.currentTime;
  for (let i = 0; i < 3; i++) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = "square";
    osc.frequency.value = i % 2 ? 660 : 990;
    gain.gain.setValueAtTime(0.0001, t0 + i * 0.3);
    gain.gain.exponentialRampToValueAtTime(0.3, t0 + i * 0.3 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.3 + 0.25);
    osc.connect(gain).connect(audio.destination);
    osc.start(t0 + i * 0.3);
    osc.stop(t0 + i * 0.3 + 0.27);
  }
}

// ---------------------------------------------------------------- queue

/** The hotline's queue order (hotline.service.QUEUE_ORDER): priority, escalation, waiting time. */
function sortCalls(calls) {
  return [...calls].sort(
    (a, b) =>
      a.priority - b.priority ||
      (b.escalation_level || 0) - (a.escalation_level || 0) ||
      new Date(a.created_at) - new Date(b.created_at) ||
      a.id - b.id,
  );
}

/* Reads overlap when live events come in bursts, and their answers may arrive out of order: only the
   newest read may paint, or a slow older answer would overwrite a newer one and stay on screen. */
const reads = { queue: 0, call: 0 };

async function refreshQueue() {
  const seq = ++reads.queue;
  let calls;
  try {
    calls = listOf(await api("GET", "/calls"), "calls"); // no status: every open call
  } catch (e) {
    return seq === reads.queue ? handleError(e) : undefined;
  }
  if (seq !== reads.queue) return;
  state.calls = sortCalls(calls.filter((c) => c.status !== "resolved"));
  const fresh = [];
  if (state.known) {
    for (const c of state.calls) if (!state.known.has(c.id) && c.priority === 1) fresh.push(c);
  }
  state.known = new Set([...(state.known || []), ...state.calls.map((c) => c.id)]);
  renderQueue(fresh.map((c) => c.id));
  if (fresh.length) announceP1(fresh[0]);
  if (state.tab === "supervisor") renderSupervisor();
}

function isMine(call) {
  return call && state.me && call.claimed_by !== null && String(call.claimed_by) === String(state.me.id);
}

function renderQueue(freshIds = []) {
  const list = $("#queue");
  fill(list,
    ...state.calls.map((c) => {
      const row = h(
        "li",
        {
          class: `call-row p${c.priority}${freshIds.includes(c.id) ? " fresh" : ""}${c.id === state.selected ? " selected" : ""}`,
          testid: "call-row",
          "data-call-id": c.id,
          "data-priority": c.priority,
          "data-status": c.status,
          tabindex: 0,
          onclick: () => openCall(c.id),
          onkeydown: (ev) => ev.key === "Enter" && openCall(c.id),
        },
        h("span", { class: "prio" }, `P${c.priority}`),
        h(
          "span",
          {},
          h("div", { class: "who" }, c.resident_name || `#${c.resident_id}`),
          h("div", { class: "what" }, c.title || c.reason),
          h(
            "div",
            { class: "what" },
            h("span", { class: "badge", testid: "row-status" }, t(`status_${c.status}`)),
            " ",
            c.claimed_by_name ? h("span", { testid: "row-claimed-by" }, `${t("claimed_by")} ${c.claimed_by_name}`) : null,
            c.escalation_level ? h("span", { class: "badge flag" }, `${t("escalated")} ${c.escalation_level}`) : null,
            c.late ? h("span", { class: "badge" }, t("late")) : null,
            c.cancelled_by_wearer ? h("span", { class: "badge" }, t("cancelled_by_wearer")) : null,
          ),
        ),
        h("span", { class: "clock", testid: "countdown", "data-target": c.target_at, "data-created": c.created_at, "data-status": c.status }),
      );
      return row;
    }),
  );
  $("#queue-count").textContent = String(state.calls.length);
  $("#queue-empty").classList.toggle("hidden", state.calls.length > 0);
  tick();
}

/** Once a second: remaining answer time while queued (red past target), time open once answered. */
function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-testid="countdown"]')) {
    const target = new Date(el.dataset.target).getTime();
    if (el.dataset.status === "queued") {
      const left = (target - now) / 1000;
      el.textContent = fmtSeconds(left);
      el.classList.toggle("overdue", left < 0);
      el.title = left < 0 ? t("overdue") : t("target");
    } else {
      el.textContent = fmtSeconds((now - new Date(el.dataset.created).getTime()) / 1000);
      el.classList.remove("overdue");
      el.classList.add("muted");
    }
  }
}

function announceP1(call) {
  const banner = $("#p1-banner");
  banner.textContent = `${t("new_p1")}: ${call.resident_name || ""} — ${call.title || call.reason}`;
  banner.dataset.callId = call.id;
  banner.classList.remove("hidden");
  beep();
  const original = document.title;
  document.title = `🔴 ${t("new_p1")}`;
  setTimeout(() => (document.title = original), 10_000);
}

// ---------------------------------------------------------------- one call

async function openCall(id) {
  if (state.tab !== "queue") switchTab("queue");
  state.selected = id;
  $("#p1-banner").classList.add("hidden");
  for (const r of document.querySelectorAll(".call-row")) r.classList.toggle("selected", Number(r.dataset.callId) === id);
  const panel = $("#call");
  fill(panel, h("p", { class: "muted" }, "…"));
  reads.call++; // an older reload still on its way must not paint over this call
  try {
    state.detail = await api("GET", `/calls/${id}`);
  } catch (e) {
    fill(panel, h("p", { class: "error" }, `${t("error")}: ${e.message}`));
    return;
  }
  state.resident = null;
  fill(panel,
    h("div", { id: "call-main" }),
    h("div", { class: "grid2" }, h("div", { id: "resident-card", class: "card", testid: "resident-card" }), h("div", { id: "contacts-card", class: "card", testid: "contacts" })),
    h("div", { id: "call-history", class: "grid2" }),
    h("div", { id: "charts", class: "grid2" }),
  );
  renderCall();
  const rid = state.detail.resident_id;
  try {
    state.resident = await api("GET", `/residents/${rid}`);
  } catch (e) {
    state.resident = { name: state.detail.resident_name, error: e.message };
  }
  if (state.selected !== id) return;
  renderResident();
  renderContacts();
  loadCharts(id, rid);
}

async function reloadCall() {
  if (!state.selected) return;
  const seq = ++reads.call;
  const selected = state.selected;
  let detail;
  try {
    detail = await api("GET", `/calls/${selected}`);
  } catch (e) {
    if (seq === reads.call && e instanceof ApiError && e.status === 404) return closeCall();
    return;
  }
  if (seq !== reads.call || selected !== state.selected) return;
  state.detail = detail;
  renderCall();
  renderContacts();
}

function closeCall() {
  state.selected = null;
  state.detail = null;
  fill($("#call"), h("p", { class: "muted hint" }, t("select_call")));
  for (const r of document.querySelectorAll(".call-row.selected")) r.classList.remove("selected");
}

function renderCall() {
  const c = state.detail;
  const main = $("#call-main");
  if (!main || !c) return;
  const mine = isMine(c);
  const open = c.status !== "resolved";
  const act = (path, body) => async () => {
    try {
      await api("POST", `/calls/${c.id}/${path}`, body);
    } catch (e) {
      return handleError(e);
    }
    await Promise.all([reloadCall(), refreshQueue()]);
  };

  // A live refresh rebuilds this screen: a note the operator is typing must survive it, focus included.
  const typing = $('[data-testid="note-input"]');
  const note = h("input", { name: "note", testid: "note-input", "data-i18n-ph": "note_ph", placeholder: t("note_ph"), size: 30 });
  note.value = typing?.value ?? "";
  const refocus = typing !== null && document.activeElement === typing ? [typing.selectionStart, typing.selectionEnd] : null;
  const noteForm = h(
    "form",
    {
      onsubmit: async (ev) => {
        ev.preventDefault();
        const text = note.value.trim();
        if (!text) return;
        note.value = ""; // before the refresh that follows the POST, so it is not carried over
        try {
          await api("POST", `/calls/${c.id}/notes`, { note: text });
        } catch (e) {
          const now = $('[data-testid="note-input"]');
          if (now && !now.value) now.value = text;
          return handleError(e);
        }
        await Promise.all([reloadCall(), refreshQueue()]);
      },
    },
    note,
    h("button", { type: "submit", testid: "note-submit", disabled: !open }, t("note")),
  );

  const kind = h("select", { name: "responder_kind", testid: "dispatch-kind" }, ...DISPATCH_KINDS.map((k) => h("option", { value: k }, responderKind(k))));
  const rname = h("input", { name: "responder_name", testid: "dispatch-name", placeholder: t("responder_name"), size: 16 });
  const dispatchForm = h(
    "form",
    {
      onsubmit: (ev) => {
        ev.preventDefault();
        act("dispatch", { responder_kind: kind.value, responder_name: rname.value.trim(), note: "" })();
      },
    },
    kind,
    rname,
    h("button", { type: "submit", testid: "dispatch-submit", disabled: !mine || !open }, t("dispatch")),
  );

  const outcome = h("select", { name: "outcome", testid: "resolve-outcome" }, ...OUTCOMES.map((o) => h("option", { value: o }, t(`oc_${o}`))));
  const rnote = h("input", { name: "resolve_note", testid: "resolve-note", placeholder: t("resolve_note"), size: 20, required: true });
  const resolveForm = h(
    "form",
    {
      onsubmit: (ev) => {
        ev.preventDefault();
        act("resolve", { outcome: outcome.value, note: rnote.value.trim() })();
      },
    },
    outcome,
    rnote,
    h("button", { type: "submit", class: "danger", testid: "resolve-submit", disabled: !mine || !open }, t("resolve")),
  );

  fill(main,
    h(
      "div",
      { class: "card" },
      h(
        "div",
        { class: "call-head" },
        h("span", { class: `badge p${c.priority}`, testid: "call-priority" }, `P${c.priority}`),
        h("h2", { testid: "call-title" }, `${c.resident_name || state.resident?.name || ""} — ${c.title || c.reason}`),
        h("span", { class: "badge", testid: "call-status", "data-status": c.status }, t(`status_${c.status}`)),
        c.claimed_by_name ? h("span", { testid: "call-claimed-by" }, `${t("claimed_by")} ${c.claimed_by_name}`) : null,
        h("span", { class: "muted" }, `${fmtDateTime(c.event_at || c.created_at)}`),
      ),
      h(
        "div",
        { class: "actions" },
        h("button", { class: "primary", testid: "claim", onclick: act("claim"), disabled: c.status !== "queued" }, t("claim")),
        h("button", { testid: "start", onclick: act("start"), disabled: !mine || c.status !== "claimed" }, t("start")),
        h("button", { testid: "release", onclick: act("release"), disabled: !mine || !open }, t("release")),
        noteForm,
      ),
      h("div", { class: "actions" }, dispatchForm, resolveForm),
    ),
  );
  if (refocus) {
    note.focus();
    note.setSelectionRange(refocus[0], refocus[1]);
  }

  const alerts = listOf(c.alerts);
  const log = listOf(c.log);
  const dispatches = listOf(c.dispatches);
  fill($("#call-history"),
    h(
      "div",
      { class: "card", testid: "call-alerts" },
      h("h3", {}, t("alerts")),
      alerts.length
        ? h("ul", { class: "plain" }, ...alerts.map((a) => h("li", {}, h("span", { class: `badge p${a.priority}` }, `P${a.priority}`), " ", a.title || a.rule, " ", h("span", { class: "muted" }, `${fmtTime(a.opened_at)} ${a.device_id || ""} ×${a.count ?? 1}`))))
        : h("p", { class: "muted" }, t("none")),
      h("h3", {}, t("dispatches")),
      dispatches.length
        ? h(
            "ul",
            { class: "plain", testid: "dispatch-list" },
            ...dispatches.map((d) =>
              h(
                "li",
                { testid: "dispatch", "data-arrived": d.arrived_at ? "yes" : "no" },
                h("b", {}, responderKind(d.responder_kind)),
                ` ${d.responder_name || ""} · ${fmtTime(d.sent_at)} `,
                d.arrived_at
                  ? h("span", { class: "badge" }, `${t("arrived")} ${fmtTime(d.arrived_at)}`)
                  : h("button", { testid: "dispatch-arrived", disabled: !mine || !open, onclick: act(`dispatches/${d.id}/arrived`) }, t("arrived")),
              ),
            ),
          )
        : h("p", { class: "muted" }, t("none")),
    ),
    h(
      "div",
      { class: "card", testid: "call-log" },
      h("h3", {}, t("log")),
      h("ul", { class: "plain" }, ...log.map((l) => h("li", { testid: "log-entry", "data-action": l.action }, h("span", { class: "muted" }, fmtTime(l.at)), " ", h("b", {}, l.actor || ""), " ", l.action, l.note ? `: ${l.note}` : ""))),
    ),
  );
}

function asText(v) {
  if (v === null || v === undefined || v === "") return null;
  if (Array.isArray(v)) return v.length ? v.map(asText).join(", ") : null;
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${asText(x)}`).join("; ");
  return String(v);
}

function renderResident() {
  const r = state.resident;
  const card = $("#resident-card");
  if (!card || !r) return;
  const notes = r.care_notes || {};
  const age = ageFrom(r.date_of_birth);
  const flags = [r.lives_alone && t("lives_alone"), r.dementia && t("dementia"), ...listOf(r.flags)].filter(Boolean);
  const access = h("span", { class: "muted", testid: "access-notes" }, `•••• (${t("hidden")})`);
  const reveal = h(
    "button",
    {
      testid: "reveal-access",
      onclick: async () => {
        try {
          const res = await api("POST", `/residents/${state.detail.resident_id}/access-reveal`, state.selected ? { call_id: state.selected } : {});
          access.textContent = res?.access_notes ?? asText(res) ?? "";
          access.className = "access";
          reveal.remove();
        } catch (e) {
          handleError(e);
        }
      },
    },
    t("reveal"),
  );
  const row = (k, v, testid) => (v ? [h("dt", {}, t(k)), h("dd", { testid }, v)] : []);
  fill(card,
    h("h3", {}, t("resident")),
    h("div", { class: "call-head" }, h("h2", { testid: "resident-name" }, r.name || ""), age !== null ? h("span", { class: "big", testid: "resident-age" }, `${age}`) : null, age !== null ? h("span", { class: "muted" }, t("age")) : null),
    r.error ? h("p", { class: "error" }, r.error) : null,
    h(
      "dl",
      { class: "kv" },
      ...row("address", [r.address, r.district].filter(Boolean).join(", "), "resident-address"),
      h("dt", {}, t("access_notes")),
      h("dd", {}, access, " ", reveal),
      ...row("conditions", asText(notes.conditions), "resident-conditions"),
      ...row("medication", asText(notes.medication ?? notes.medications), "resident-medication"),
      ...row("mobility", asText(notes.mobility), "resident-mobility"),
      ...row("language", asText(notes.language), "resident-language"),
      h("dt", {}, t("flags")),
      h("dd", { testid: "resident-flags" }, ...(flags.length ? flags.map((f) => h("span", { class: "badge flag" }, f)) : [t("none")])),
    ),
  );
}

function renderContacts() {
  const card = $("#contacts-card");
  if (!card) return;
  const c = state.detail;
  const contacts = listOf(c?.contacts).length ? listOf(c.contacts) : listOf(state.resident?.contacts);
  const sorted = [...contacts].sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
  const open = c && c.status !== "resolved";
  fill(card,
    h("h3", {}, t("contacts")),
    sorted.length
      ? h(
          "ol",
          { class: "contacts" },
          ...sorted.map((ct) => {
            const result = h("select", { testid: "attempt-result" }, ...ATTEMPT_RESULTS.map((r) => h("option", { value: r }, t(r))));
            const attempts = listOf(ct.attempts);
            return h(
              "li",
              { testid: "contact", "data-contact-id": ct.id },
              h("b", {}, ct.name),
              ` (${ct.relation || ct.kind || ""}) `,
              ct.phone ? h("a", { href: `tel:${ct.phone}`, class: "muted" }, ct.phone) : null,
              h(
                "div",
                { class: "actions" },
                result,
                h(
                  "button",
                  {
                    testid: "record-attempt",
                    disabled: !open,
                    onclick: async () => {
                      try {
                        await api("POST", `/calls/${c.id}/contact-attempts`, { contact_id: ct.id, result: result.value });
                      } catch (e) {
                        return handleError(e);
                      }
                      reloadCall();
                    },
                  },
                  t("record_attempt"),
                ),
              ),
              attempts.length
                ? h("div", { class: "attempts", testid: "attempts" }, attempts.map((a) => `${fmtTime(a.at)} ${t(a.result)}`).join(" · "))
                : null,
            );
          }),
        )
      : h("p", { class: "muted" }, t("none")),
  );
}

function pick(o, ...keys) {
  for (const k of keys) if (o?.[k] !== undefined && o[k] !== null) return o[k];
  return null;
}

function msOf(p) {
  return new Date(pick(p, "ts", "bucket", "t", "at", "time")).getTime();
}

/** Samples of which room the resident was in → spans (a sample holds until the next, at most 10 min). */
export function presenceSpans(items) {
  if (items.length && pick(items[0], "from", "start") !== null) {
    return items.map((i) => ({ room: i.room, from: new Date(pick(i, "from", "start")).getTime(), to: new Date(pick(i, "to", "end") || Date.now()).getTime() }));
  }
  const pts = items.filter((i) => i.room && i.presence !== false).map((i) => ({ room: i.room, ms: msOf(i) })).sort((a, b) => a.ms - b.ms);
  return pts.map((p, i) => ({ room: p.room, from: p.ms, to: Math.min(pts[i + 1]?.ms ?? p.ms + 60_000, p.ms + 600_000) }));
}

async function loadCharts(callId, rid) {
  const to = Date.now();
  const from = to - 24 * 3600_000;
  const q = `from=${encodeURIComponent(new Date(from).toISOString())}&to=${encodeURIComponent(new Date(to).toISOString())}`;
  const get = (p) => api("GET", `/residents/${rid}/${p}`).catch(() => []);
  const [vitals, events, presence, locations] = await Promise.all([get(`vitals?${q}`), get(`events?${q}&limit=50`), get(`presence?${q}&limit=1000`), get(`location?${q}&limit=500`)]);
  if (state.selected !== callId) return;
  const v = listOf(vitals, "vitals", "samples");
  const charts = $("#charts");
  const r = state.resident || {};
  const ev = listOf(events, "events");
  const locs = listOf(locations, "locations").map((p) => ({ lat: p.lat, lon: p.lon, ts: pick(p, "ts", "at") })).filter((p) => p.lat !== null && p.lat !== undefined);
  fill(charts,
    h(
      "div",
      { class: "card" },
      h("h3", {}, t("vitals24")),
      lineChart({
        series: [
          { name: t("hr"), color: "#ff6961", min: 50, max: 110, points: v.map((p) => [msOf(p), pick(p, "hr", "hr_avg", "hr_mean")]) },
          { name: t("spo2"), color: "#64d2ff", min: 88, max: 100, points: v.map((p) => [msOf(p), pick(p, "spo2", "spo2_avg", "spo2_mean")]) },
        ],
        from,
        to,
        testid: "vitals-chart",
        label: t("vitals24"),
        noData: t("no_data"),
      }),
      h("h3", {}, t("presence")),
      timeline({ spans: presenceSpans(listOf(presence, "presence", "rooms")), from, to, testid: "presence-timeline", label: t("presence"), noData: t("no_data") }),
    ),
    h(
      "div",
      { class: "card" },
      h("h3", {}, t("events")),
      ev.length
        ? h("ul", { class: "plain", testid: "events" }, ...ev.slice(0, 15).map((e) => h("li", {}, h("span", { class: "muted" }, fmtTime(pick(e, "ts", "at"))), " ", h("b", {}, e.type || e.kind || ""), e.room ? ` · ${e.room}` : "", e.confidence ? ` · ${Math.round(e.confidence * 100)}%` : "")))
        : h("p", { class: "muted", testid: "events" }, t("no_data")),
      r.dementia || locs.length
        ? [
            h("h3", {}, t("trail")),
            trailPlot({ home: { lat: r.home_lat, lon: r.home_lon }, geofenceM: r.geofence_m || 200, points: locs, testid: "trail", label: t("trail"), homeLabel: t("home"), fenceLabel: t("geofence"), noData: t("no_data") }),
          ]
        : null,
    ),
  );
}

// ---------------------------------------------------------------- supervisor

async function renderSupervisor() {
  const view = $("#view-supervisor");
  const now = Date.now();
  const calls = state.calls;
  const past = calls.filter((c) => c.status === "queued" && new Date(c.target_at).getTime() < now);
  const oldest = calls.filter((c) => c.status === "queued").reduce((m, c) => Math.max(m, (now - new Date(c.created_at).getTime()) / 1000), 0);
  const byPrio = [1, 2, 3, 4].map((p) => calls.filter((c) => c.priority === p).length);
  const byOp = new Map();
  for (const c of calls) {
    const k = c.claimed_by_name || t("unassigned");
    if (!byOp.has(k)) byOp.set(k, []);
    byOp.get(k).push(c);
  }
  const start = new Date();
  start.setHours(0, 0, 0, 0);
  let report = null;
  try {
    report = await api("GET", `/reports/answer-times?from=${encodeURIComponent(start.toISOString())}&to=${encodeURIComponent(new Date().toISOString())}`);
  } catch (e) {
    report = { error: e.message };
  }
  const callLine = (c) => h("li", {}, h("span", { class: `badge p${c.priority}` }, `P${c.priority}`), ` ${c.resident_name || ""} — ${c.title || c.reason} `, h("span", { class: "muted" }, t(`status_${c.status}`)));
  fill(view,
    h(
      "div",
      { class: "card", testid: "sv-health" },
      h("h3", {}, t("queue_health")),
      h(
        "div",
        { class: "stats" },
        h("div", { class: "stat" }, h("span", { class: "big", testid: "sv-open" }, String(calls.length)), h("span", { class: "muted" }, t("open_calls"))),
        h("div", { class: "stat" }, h("span", { class: `big ${past.length ? "red" : ""}`, testid: "sv-past-target" }, String(past.length)), h("span", { class: "muted" }, t("past_target"))),
        h("div", { class: "stat" }, h("span", { class: "big" }, fmtSeconds(oldest)), h("span", { class: "muted" }, t("oldest_wait"))),
      ),
      barChart({ bars: byPrio.map((n, i) => ({ label: `P${i + 1}`, value: n })), testid: "sv-by-priority", color: "#0a84ff", height: 120 }),
    ),
    h("div", { class: "card", testid: "sv-past" }, h("h3", {}, t("past_target")), past.length ? h("ul", { class: "plain" }, ...past.map(callLine)) : h("p", { class: "muted" }, t("none"))),
    h(
      "div",
      { class: "card", testid: "sv-operators" },
      h("h3", {}, t("operators")),
      h("table", {}, ...[...byOp.entries()].map(([name, cs]) => h("tr", {}, h("th", {}, name), h("td", {}, h("ul", { class: "plain" }, ...cs.map(callLine)))))),
    ),
    h("div", { class: "card", testid: "sv-answer-times" }, h("h3", {}, t("answer_times")), answerTable(report)),
  );
}

const FIG_COLS = ["calls", "claimed", "claim_p50_s", "claim_p90_s", "within_target_share", "resolved", "resolve_p50_s"];

/** Figures of hotline.reports.answer_times: seconds as m:ss, shares as %, missing as "–". */
function fig(key, v) {
  if (v === null || v === undefined) return "–";
  if (key.endsWith("_share")) return `${Math.round(v * 100)}%`;
  if (key.endsWith("_s")) return fmtSeconds(v);
  return String(v);
}

function answerTable(report) {
  if (!report) return h("p", { class: "muted" }, t("none"));
  if (report.error) return h("p", { class: "error" }, report.error);
  const table = (label, rows, keyOf) =>
    h(
      "table",
      { class: "figures" },
      h("tr", {}, h("th", {}, label), ...FIG_COLS.map((c) => h("th", {}, t(`fig_${c}`)))),
      ...rows.map((r) => h("tr", {}, h("th", {}, keyOf(r)), ...FIG_COLS.map((c) => h("td", {}, fig(c, r[c]))))),
    );
  const overall = report.overall || {};
  const d = report.dispatch || {};
  return h(
    "div",
    {},
    h(
      "div",
      { class: "stats" },
      h("div", { class: "stat" }, h("span", { class: "big", testid: "sv-calls-today" }, fig("calls", overall.calls ?? 0)), h("span", { class: "muted" }, t("fig_calls"))),
      h("div", { class: "stat" }, h("span", { class: "big" }, fig("claim_p50_s", overall.claim_p50_s)), h("span", { class: "muted" }, t("fig_claim_p50_s"))),
      h("div", { class: "stat" }, h("span", { class: "big" }, fig("claim_p90_s", overall.claim_p90_s)), h("span", { class: "muted" }, t("fig_claim_p90_s"))),
      h("div", { class: "stat" }, h("span", { class: "big" }, fig("within_target_share", overall.within_target_share)), h("span", { class: "muted" }, t("fig_within_target_share"))),
    ),
    listOf(report.by_priority).length ? table("P", listOf(report.by_priority), (r) => `P${r.priority}`) : null,
    listOf(report.by_operator).length ? table(t("operators_short"), listOf(report.by_operator), (r) => r.operator) : null,
    d.dispatches
      ? h("p", { class: "muted" }, `${t("dispatches")}: ${d.dispatches} · ${t("arrived")} ${d.arrived} · p50 ${fig("x_s", d.arrival_p50_s)} · p90 ${fig("x_s", d.arrival_p90_s)}`)
      : null,
  );
}

// ---------------------------------------------------------------- shell

function switchTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  $("#view-queue").classList.toggle("hidden", tab !== "queue");
  $("#view-supervisor").classList.toggle("hidden", tab !== "supervisor");
  if (tab === "supervisor") renderSupervisor();
}

function handleError(e) {
  if (e instanceof ApiError && e.status === 401) return showLogin();
  const banner = h("div", { class: "card error", testid: "action-error", role: "alert" }, `${t("error")}: ${e.message}`);
  document.body.append(banner);
  Object.assign(banner.style, { position: "fixed", bottom: "1rem", right: "1rem", zIndex: 20 });
  setTimeout(() => banner.remove(), 6000);
}

function showLogin() {
  state.feed?.close();
  state.feed = null;
  for (const id of ["#view-queue", "#view-supervisor", "#tabs", "#logout", "#live-state"]) $(id).classList.add("hidden");
  $("#whoami").textContent = "";
  $("#login").classList.remove("hidden");
  $("#login [name=username]").focus();
}

let pending = null;

/** Many events arrive in bursts (a fall raises alerts and a call): re-read once per burst. */
function onLive(ev) {
  clearTimeout(pending);
  pending = setTimeout(() => {
    refreshQueue();
    if (state.selected && (!ev.call_id || Number(ev.call_id) === state.selected)) reloadCall();
  }, 150);
}

function setLiveState(s) {
  if (s === "revoked") {
    logout();
    return showLogin();
  }
  const el = $("#live-state");
  el.dataset.state = s;
  el.textContent = s === "open" ? `● ${t("live")}` : t("offline");
  el.style.color = s === "open" ? "var(--ok)" : "var(--p2)";
  if (s === "open") refreshQueue(); // catch anything that happened while the feed was down
}

async function start() {
  const s = session();
  state.me = s?.user;
  try {
    state.me = await whoami();
  } catch (e) {
    return showLogin();
  }
  if (state.me.role === "family") {
    location.href = "/family/";
    return;
  }
  $("#login").classList.add("hidden");
  $("#view-queue").classList.remove("hidden");
  $("#logout").classList.remove("hidden");
  $("#live-state").classList.remove("hidden");
  $("#tabs").classList.toggle("hidden", false);
  $("[data-tab=supervisor]").classList.toggle("hidden", !["supervisor", "admin"].includes(state.me.role));
  $("#whoami").textContent = `${state.me.display_name || state.me.username} · ${state.me.role}`;
  document.body.dataset.user = state.me.username;
  await refreshQueue();
  state.feed = live(onLive, setLiveState);
}

function onKey(ev) {
  if (ev.target.closest("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const click = (tid) => document.querySelector(`[data-testid="${tid}"]:not(:disabled)`)?.click();
  const idx = state.calls.findIndex((c) => c.id === state.selected);
  switch (ev.key.toLowerCase()) {
    case "c":
      click("claim");
      break;
    case "s":
      click("start");
      break;
    case "n":
      ev.preventDefault();
      $('[data-testid="note-input"]')?.focus();
      break;
    case "d":
      ev.preventDefault();
      $('[data-testid="dispatch-kind"]')?.focus();
      break;
    case "arrowdown":
    case "j":
      ev.preventDefault();
      if (state.calls.length) openCall(state.calls[Math.min(idx + 1, state.calls.length - 1)].id);
      break;
    case "arrowup":
    case "k":
      ev.preventDefault();
      if (state.calls.length) openCall(state.calls[Math.max(idx - 1, 0)].id);
      break;
    case "escape":
      closeCall();
      $("#p1-banner").classList.add("hidden");
      break;
    default:
  }
}

document.addEventListener("DOMContentLoaded", () => {
  translatePage();
  $("#lang-slot").append(
    langButton(() => {
      renderQueue();
      if (state.detail) {
        renderCall();
        renderResident();
        renderContacts();
      }
      if (state.tab === "supervisor") renderSupervisor();
    }),
  );
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    unlockAudio();
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
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("#p1-banner").addEventListener("click", () => openCall(Number($("#p1-banner").dataset.callId)));
  document.addEventListener("keydown", onKey);
  document.addEventListener("click", unlockAudio, { once: true });
  setInterval(tick, 1000);
  setInterval(() => state.feed && refreshQueue(), 30_000);
  if (session()) start();
  else showLogin();
});
