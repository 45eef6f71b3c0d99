// Welfare services: service requests and work orders, welfare visits, rescue timelines, supervision.
// Plain ES module like the console; every action re-reads from the API, so the page shows what the
// database says. Providers' workers act through operator accounts (there is no provider role).

import { api, ApiError, fill, h, login, logout, session, whoami } from "/common/api.js";
import { currentLang, langButton, responderKind, t, translatePage } from "/common/i18n.js";

const CATEGORIES = ["meal_delivery", "cleaning", "bathing", "hospital_escort", "repairs", "shopping", "chat", "other"];
// welfare.lifecycle.ORDER_TRANSITIONS: the actions each order status allows
const ACTIONS = {
  assigned: ["accept", "decline", "cancel"],
  accepted: ["assign_worker", "cancel"],
  worker_assigned: ["check_in", "assign_worker", "cancel"],
  checked_in: ["check_out"],
};

const $ = (sel) => document.querySelector(sel);
const state = { me: null, tab: "requests", providers: [], residents: [] };

const fmt = (ts) =>
  ts ? new Date(ts).toLocaleString(currentLang() === "zh-CN" ? "zh-CN" : "en-GB", { dateStyle: "short", timeStyle: "short" }) : "—";
const words = (s) => String(s ?? "").replaceAll("_", " ");
/** An API word (status, category, action, column...) in the reader's language; English is the word itself. */
const tr = (s) => {
  const key = `w_${s}`;
  const found = t(key);
  return found === key ? words(s) : found;
};
/** A message with {placeholders} filled in. */
const msg = (key, vars = {}) => t(key).replace(/\{(\w+)\}/g, (_m, k) => String(vars[k] ?? ""));

function flash(text, error = false) {
  const el = $("#flash");
  el.textContent = text;
  el.classList.toggle("error", error);
  el.classList.remove("hidden");
}

async function guarded(fn) {
  try {
    await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return showLogin();
    flash(e instanceof ApiError ? `${e.status}: ${e.message}` : String(e), true);
  }
}

// ---------------------------------------------------------------- requests and orders

function orderCell(r) {
  if (!r.order_id) return h("span", { class: "muted" }, "—");
  return h(
    "span",
    {},
    h("span", { class: "badge", testid: "order-status" }, tr(r.order_status)),
    " ",
    r.org_name || "",
    r.worker_name ? ` · ${r.worker_name}` : "",
    r.rating ? ` · ★${r.rating}` : "",
  );
}

function actionsCell(r) {
  const cell = h("div", { class: "row" });
  if (r.status === "open") {
    const pick = h(
      "select",
      { testid: "assign-org" },
      state.providers.map((p) => h("option", { value: p.id }, p.name)),
    );
    cell.append(
      pick,
      h("button", {
        type: "button", testid: "assign", class: "primary",
        onclick: () => guarded(async () => {
          await api("POST", `/welfare/requests/${r.id}/assign`, { org_id: Number(pick.value) });
          flash(msg("w_msg_assigned", { id: r.id }));
          await loadRequests();
        }),
      }, t("w_assign")),
    );
  }
  for (const action of (r.status === "assigned" && ACTIONS[r.order_status]) || []) {
    let worker = null;
    if (action === "assign_worker") {
      worker = h("input", { placeholder: t("w_worker_name"), testid: "worker-name", maxlength: 200 });
      cell.append(worker);
    }
    cell.append(
      h("button", {
        type: "button", testid: `act-${action}`,
        onclick: () => guarded(async () => {
          const body = { action };
          if (worker) body.worker_name = worker.value;
          await api("POST", `/welfare/orders/${r.order_id}/actions`, body);
          flash(msg("w_msg_order", { id: r.order_id, action: tr(action) }));
          await loadRequests();
        }),
      }, t(`w_act_${action}`)),
    );
  }
  return cell;
}

async function loadRequests() {
  const [open, done] = await Promise.all([api("GET", "/welfare/requests"), api("GET", "/welfare/requests?status=done")]);
  const rows = [...open, ...done.slice(0, 20)];
  fill(
    $("#requests"),
    rows.map((r) =>
      h(
        "tr",
        { testid: "request-row", "data-request-id": r.id, "data-status": r.status },
        h("td", {}, String(r.id)),
        h("td", {}, r.resident_name, h("div", { class: "muted" }, r.district || "")),
        h("td", {}, tr(r.category), h("div", { class: "muted" }, r.source === "device" ? t("w_from_device") : r.notes || "")),
        h("td", {}, fmt(r.wanted_at)),
        h(
          "td",
          {},
          h("span", { class: `badge ${r.status === "done" ? "done" : ""}`, testid: "request-status" }, tr(r.status)),
          r.overdue ? h("span", { class: "badge overdue", testid: "overdue" }, tr(r.overdue)) : null,
        ),
        h("td", {}, orderCell(r)),
        h("td", {}, actionsCell(r)),
      ),
    ),
  );
  if (!rows.length) fill($("#requests"), h("tr", {}, h("td", { colspan: 7, class: "muted" }, t("w_no_requests"))));
}

async function loadForm() {
  [state.providers, state.residents] = await Promise.all([api("GET", "/welfare/providers"), api("GET", "/residents")]);
  fill($("[data-testid=req-resident]"), state.residents.map((r) => h("option", { value: r.id }, `${r.name} (#${r.id})`)));
  fill($("[data-testid=req-category]"), CATEGORIES.map((c) => h("option", { value: c }, tr(c))));
  const wanted = new Date(Date.now() + 3600_000);
  wanted.setSeconds(0, 0);
  $("[data-testid=req-wanted]").value = new Date(wanted - wanted.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

// ---------------------------------------------------------------- visits

async function loadVisits() {
  const rows = await api("GET", "/welfare/visits");
  fill(
    $("#visits"),
    rows.map((v) => {
      const worker = h("input", { placeholder: t("w_worker"), testid: "visit-worker", maxlength: 200 });
      const findings = h("input", { placeholder: t("w_findings"), testid: "visit-findings", maxlength: 4000 });
      const follow = h("input", { placeholder: t("w_followups"), testid: "visit-followups", maxlength: 4000 });
      return h(
        "tr",
        { testid: "visit-row", "data-visit-id": v.id, "data-resident-id": v.resident_id },
        h("td", {}, String(v.id)),
        h("td", {}, v.resident_name),
        h("td", {}, v.district || ""),
        h("td", {}, tr(v.tier)),
        h("td", {}, tr(v.kind)),
        h("td", {}, fmt(v.due_at), v.overdue ? h("span", { class: "badge overdue", testid: "overdue" }, t("overdue")) : null),
        h(
          "td",
          {},
          h("div", { class: "row" }, worker, findings, follow,
            h("button", {
              type: "button", class: "primary", testid: "visit-record",
              onclick: () => guarded(async () => {
                await api("POST", `/welfare/visits/${v.id}/record`, {
                  worker: worker.value, findings: findings.value, follow_ups: follow.value,
                });
                flash(msg("w_msg_visit", { id: v.id }));
                await loadVisits();
              }),
            }, t("w_record"))),
        ),
      );
    }),
  );
  if (!rows.length) fill($("#visits"), h("tr", {}, h("td", { colspan: 7, class: "muted" }, t("w_no_visits"))));
}

// ---------------------------------------------------------------- rescue timeline

async function showTimeline(callId) {
  const tl = await api("GET", `/welfare/calls/${callId}/timeline`);
  const d = tl.durations_s;
  const mins = (s) => (s === null || s === undefined ? "—" : msg("w_min_s", { m: Math.floor(s / 60), s: Math.round(s % 60) }));
  fill(
    $("#timeline"),
    h("p", { testid: "timeline-summary" },
      `${msg("w_call_n", { id: tl.call_id })} · P${tl.priority} · ${t(`status_${tl.status}`)} · ${msg("w_claimed_after", { t: mins(d.to_claim) })} · ` +
        `${msg("w_on_site_after", { t: mins(d.to_arrival) })}${tl.handover ? ` · ${tr(tl.handover)}` : ""}`),
    h(
      "ol",
      { class: "timeline" },
      tl.steps.map((s) =>
        h(
          "li",
          { testid: "timeline-step", "data-kind": s.kind },
          h("span", {}, fmt(s.at)),
          h("strong", {}, tr(s.kind)),
          h("span", {}, [s.responder_kind && responderKind(s.responder_kind), s.responder_name, s.handover ? tr(s.handover) : s.label,
            s.outcome && t(`oc_${s.outcome}`), s.note, s.by && msg("w_by", { who: s.by })]
            .filter(Boolean).join(" · ")),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------- supervision

function table(testid, rows, cols) {
  return h(
    "table",
    { testid },
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, tr(c))))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => h("td", {}, r[c] === null || r[c] === undefined ? "—" : String(r[c])))))),
  );
}

function supQuery() {
  const f = $("#sup-form");
  const q = new URLSearchParams();
  if (f.from.value) q.set("from", `${f.from.value}T00:00:00Z`);
  if (f.to.value) q.set("to", `${f.to.value}T23:59:59Z`);
  return q;
}

async function loadSupervision() {
  const s = await api("GET", `/welfare/supervision?${supQuery()}`);
  fill(
    $("#sup"),
    h("div", { class: "card" }, h("h3", {}, t("w_sup_daily")),
      table("sup-daily", s.daily, ["day", "district", "calls", "calls_in_target", "service_orders", "visits"])),
    h("div", { class: "card" }, h("h3", {}, t("w_sup_answer")),
      table("sup-answer", s.answer_times, ["priority", "target_s", "calls", "in_target", "in_target_rate", "median_answer_s"])),
    h("div", { class: "card" }, h("h3", {}, t("w_sup_providers")),
      table("sup-providers", s.providers, ["org", "orders", "completed", "declined", "on_time_rate", "avg_rating"])),
    h("div", { class: "card" }, h("h3", {}, t("w_sup_visits")),
      table("sup-visits", s.visit_rates, ["tier", "district", "residents", "visited", "rate"])),
    h("div", { class: "card" }, h("h3", {}, t("w_sup_overdue")),
      h("p", { testid: "sup-overdue" },
        msg("w_overdue_counts", { r: s.overdue.requests.length, v: s.overdue.visits.length }))),
  );
}

async function downloadCsv(tableName) {
  const q = supQuery();
  q.set("format", "csv");
  q.set("table", tableName);
  const res = await fetch(`/api/v1/welfare/supervision?${q}`, {
    headers: { Authorization: `Bearer ${session()?.access_token}` },
  });
  if (!res.ok) throw new ApiError(res.status, res.statusText);
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: `welfare-${tableName}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---------------------------------------------------------------- shell

async function switchTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const v of ["requests", "visits", "timeline", "supervision"]) $(`#view-${v}`).classList.toggle("hidden", v !== tab);
  if (tab === "requests") await guarded(loadRequests);
  if (tab === "visits") await guarded(loadVisits);
  if (tab === "supervision") await guarded(loadSupervision);
}

function showLogin() {
  for (const id of ["#tabs", "#logout", "#view-requests", "#view-visits", "#view-timeline", "#view-supervision"])
    $(id).classList.add("hidden");
  $("#login").classList.remove("hidden");
}

async function start() {
  state.me = await whoami();
  if (state.me.role === "family") {
    flash(t("w_staff_only"), true);
    return;
  }
  $("#login").classList.add("hidden");
  $("#tabs").classList.remove("hidden");
  $("#logout").classList.remove("hidden");
  $("#whoami").textContent = `${state.me.username} (${state.me.role})`;
  const supervisor = ["supervisor", "admin"].includes(state.me.role);
  $("[data-tab=supervision]").classList.toggle("hidden", !supervisor);
  $("#provider-form").classList.toggle("hidden", !supervisor);
  await guarded(loadForm);
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("timeline")) {
    await switchTab("timeline");
    $("[data-testid=timeline-call]").value = hash.get("timeline");
    await guarded(() => showTimeline(hash.get("timeline")));
  } else {
    await switchTab("requests");
  }
  document.body.dataset.ready = "1";
}

function wire() {
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    guarded(async () => {
      try {
        await login(f.username.value, f.password.value);
      } catch {
        $("[data-testid=login-error]").classList.remove("hidden");
        return;
      }
      await start();
    });
  });
  $("#logout").addEventListener("click", () => {
    logout();
    showLogin();
  });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("#req-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    guarded(async () => {
      const r = await api("POST", "/welfare/requests", {
        resident_id: Number(f.resident_id.value),
        category: f.category.value,
        wanted_at: new Date(f.wanted_at.value).toISOString(),
        notes: f.notes.value,
      });
      flash(msg("w_msg_opened", { id: r.id }));
      f.notes.value = "";
      await loadRequests();
    });
  });
  $("#provider-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    guarded(async () => {
      const p = await api("POST", "/welfare/providers", { name: f.name.value, district: f.district.value });
      flash(msg("w_msg_provider", { name: p.name }));
      f.reset();
      await loadForm();
      await loadRequests();
    });
  });
  $("#schedule").addEventListener("click", () =>
    guarded(async () => {
      const r = await api("POST", "/welfare/visits/schedule");
      $("#schedule-result").textContent = msg("w_msg_scheduled", { n: r.created });
      await loadVisits();
    }),
  );
  $("#tl-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(() => showTimeline(ev.target.call_id.value));
  });
  $("#sup-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(loadSupervision);
  });
  for (const b of document.querySelectorAll("[data-csv]")) b.addEventListener("click", () => guarded(() => downloadCsv(b.dataset.csv)));
}

wire();
translatePage();
$("#lang-slot").append(
  langButton(() => {
    translatePage();
    if (state.me) switchTab(state.tab);
  }),
);
if (session()) guarded(start);
else showLogin();
