// Two languages: zh-CN and English. The browser's language decides unless the user switched.

const STRINGS = {
  en: {
    app: "CareWatch",
    console: "Operator console",
    family: "Family",
    login: "Sign in",
    username: "Username",
    password: "Password",
    logout: "Sign out",
    login_failed: "Sign-in failed: check username and password",
    queue: "Queue",
    supervisor: "Supervisor",
    live: "live",
    offline: "reconnecting…",
    empty_queue: "No open calls",
    new_p1: "NEW P1 CALL",
    priority: "P",
    waiting: "waiting",
    target: "target",
    overdue: "overdue",
    status_queued: "queued",
    status_claimed: "claimed",
    status_in_progress: "in progress",
    status_resolved: "resolved",
    claimed_by: "claimed by",
    late: "late data",
    cancelled_by_wearer: "cancelled by wearer",
    escalated: "escalated",
    select_call: "Select a call (↑/↓, Enter) — C claim, S start, N note, D dispatch, Esc close",
    claim: "Claim (C)",
    release: "Release",
    start: "Start (S)",
    note: "Add note",
    note_ph: "Note…",
    dispatch: "Dispatch",
    responder_name: "Name / unit",
    arrived: "Arrived",
    resolve: "Resolve",
    outcome: "Outcome",
    resolve_note: "Resolution note",
    resident: "Resident",
    age: "age",
    address: "Address",
    access_notes: "Access notes",
    reveal: "Reveal",
    hidden: "hidden",
    conditions: "Conditions",
    medication: "Medication",
    mobility: "Mobility",
    language: "Language",
    flags: "Flags",
    lives_alone: "lives alone",
    dementia: "dementia",
    contacts: "Emergency contacts",
    record_attempt: "Record attempt",
    reached: "reached",
    no_answer: "no answer",
    busy: "busy",
    declined: "declined",
    alerts: "Alerts behind this call",
    log: "Call log",
    dispatches: "Dispatches",
    vitals24: "Heart rate and SpO2, last 24 h",
    hr: "Heart rate",
    spo2: "SpO2",
    events: "Recent events",
    presence: "Room presence",
    trail: "Location trail",
    geofence: "geofence",
    home: "home",
    no_data: "no data",
    ambulance: "ambulance",
    care_worker: "care worker",
    property_manager: "property manager",
    police: "police",
    other: "other",
    family_kind: "family",
    oc_genuine_emergency: "genuine emergency",
    oc_resident_ok: "resident OK",
    oc_false_alarm: "false alarm",
    oc_no_answer_help_sent: "no answer, help sent",
    oc_technical_fault: "technical fault",
    oc_cancelled_by_wearer: "cancelled by wearer",
    queue_health: "Queue health",
    open_calls: "Open calls",
    past_target: "Calls past target",
    oldest_wait: "Longest wait",
    operators: "Operators and their open calls",
    unassigned: "unassigned",
    answer_times: "Today's answer times",
    operators_short: "Operator",
    fig_calls: "calls",
    fig_claimed: "answered",
    fig_claim_p50_s: "answer p50",
    fig_claim_p90_s: "answer p90",
    fig_within_target_share: "within target",
    fig_resolved: "resolved",
    fig_resolve_p50_s: "resolve p50",
    none: "none",
    status_ok: "OK",
    status_attention: "Needs attention",
    status_emergency: "Emergency",
    hr7: "Heart rate, last 7 days",
    activity7: "Activity by day",
    steps: "steps",
    calls_recent: "Open and recent calls",
    no_calls: "No calls",
    tl_alarm: "Alarm",
    tl_opened: "Hotline call opened",
    tl_claimed: "An operator took the call",
    tl_dispatched: "Help sent",
    tl_arrived: "Help arrived",
    tl_resolved: "Call closed",
    ho_hospital: "Handed over to hospital",
    ho_family: "Handed over to family",
    ho_resolved_at_home: "Resolved at home",
    ho_other: "Handed over",
    no_residents: "No relatives linked to this account",
    not_available: "Not available",
    last_seen: "last seen",
    place_home: "at home",
    place_away: "away from home",
    error: "Error",
  },
  "zh-CN": {
    app: "关爱守护",
    console: "坐席控制台",
    family: "家属",
    login: "登录",
    username: "用户名",
    password: "密码",
    logout: "退出",
    login_failed: "登录失败：请检查用户名和密码",
    queue: "呼叫队列",
    supervisor: "值班主管",
    live: "实时",
    offline: "正在重连…",
    empty_queue: "暂无待处理呼叫",
    new_p1: "新的一级呼叫",
    priority: "P",
    waiting: "已等待",
    target: "目标",
    overdue: "已超时",
    status_queued: "排队中",
    status_claimed: "已认领",
    status_in_progress: "处理中",
    status_resolved: "已结案",
    claimed_by: "认领人",
    late: "延迟数据",
    cancelled_by_wearer: "佩戴者已取消",
    escalated: "已升级",
    select_call: "选择呼叫（↑/↓，回车）— C 认领，S 开始，N 备注，D 派遣，Esc 关闭",
    claim: "认领 (C)",
    release: "释放",
    start: "开始处理 (S)",
    note: "添加备注",
    note_ph: "备注…",
    dispatch: "派遣",
    responder_name: "姓名／单位",
    arrived: "已到达",
    resolve: "结案",
    outcome: "结果",
    resolve_note: "结案说明",
    resident: "老人",
    age: "岁",
    address: "地址",
    access_notes: "入户信息",
    reveal: "显示",
    hidden: "已隐藏",
    conditions: "疾病",
    medication: "用药",
    mobility: "行动能力",
    language: "语言",
    flags: "标记",
    lives_alone: "独居",
    dementia: "认知障碍",
    contacts: "紧急联系人",
    record_attempt: "记录联系",
    reached: "已联系上",
    no_answer: "无人接听",
    busy: "占线",
    declined: "拒绝",
    alerts: "触发本次呼叫的告警",
    log: "呼叫记录",
    dispatches: "派遣记录",
    vitals24: "心率与血氧（近24小时）",
    hr: "心率",
    spo2: "血氧",
    events: "近期事件",
    presence: "房间活动",
    trail: "位置轨迹",
    geofence: "电子围栏",
    home: "家",
    no_data: "无数据",
    ambulance: "救护车",
    care_worker: "护理员",
    property_manager: "物业",
    police: "警察",
    other: "其他",
    family_kind: "家属",
    oc_genuine_emergency: "确有紧急情况",
    oc_resident_ok: "老人无恙",
    oc_false_alarm: "误报",
    oc_no_answer_help_sent: "无人应答，已派人",
    oc_technical_fault: "设备故障",
    oc_cancelled_by_wearer: "佩戴者取消",
    queue_health: "队列状况",
    open_calls: "未结呼叫",
    past_target: "超时呼叫",
    oldest_wait: "最长等待",
    operators: "坐席及其呼叫",
    unassigned: "未认领",
    answer_times: "今日应答时间",
    operators_short: "坐席",
    fig_calls: "呼叫数",
    fig_claimed: "已应答",
    fig_claim_p50_s: "应答中位数",
    fig_claim_p90_s: "应答P90",
    fig_within_target_share: "达标率",
    fig_resolved: "已结案",
    fig_resolve_p50_s: "结案中位数",
    none: "无",
    status_ok: "正常",
    status_attention: "需要关注",
    status_emergency: "紧急",
    hr7: "心率（近7天）",
    activity7: "每日活动",
    steps: "步",
    calls_recent: "未结及近期呼叫",
    no_calls: "暂无呼叫",
    tl_alarm: "报警",
    tl_opened: "热线已受理",
    tl_claimed: "话务员已接听处理",
    tl_dispatched: "已派出救助",
    tl_arrived: "救助人员已到达",
    tl_resolved: "已结案",
    ho_hospital: "已送医院",
    ho_family: "已交由家属",
    ho_resolved_at_home: "居家处置完毕",
    ho_other: "已交接",
    no_residents: "此账号未关联老人",
    not_available: "无法查看",
    last_seen: "最近数据",
    place_home: "在家",
    place_away: "不在家",
    error: "错误",
  },
};

const PREF = "carewatch.lang";

export function currentLang() {
  const saved = localStorage.getItem(PREF);
  if (saved && STRINGS[saved]) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

export function setLang(lang) {
  localStorage.setItem(PREF, lang);
  document.documentElement.lang = lang;
}

export function t(key) {
  const lang = currentLang();
  return STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
}

/** Fill every [data-i18n] and [data-i18n-ph] element; pages call this after a switch. */
export function translatePage(root = document) {
  document.documentElement.lang = currentLang();
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-ph]")) el.placeholder = t(el.dataset.i18nPh);
}

/** A button that flips between the two languages and re-renders through `onChange`. */
export function langButton(onChange) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "lang";
  b.dataset.testid = "lang-switch";
  const label = () => (b.textContent = currentLang() === "zh-CN" ? "English" : "中文");
  label();
  b.addEventListener("click", () => {
    setLang(currentLang() === "zh-CN" ? "en" : "zh-CN");
    label();
    translatePage();
    onChange();
  });
  return b;
}

export function fmtTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleTimeString(currentLang(), { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function fmtDateTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(currentLang(), {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** 75 → "1:15", -12 → "-0:12": answer-time countdowns. */
export function fmtSeconds(s) {
  const neg = s < 0;
  s = Math.abs(Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  const body = h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  return (neg ? "-" : "") + body;
}
