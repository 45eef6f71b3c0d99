// Hand-drawn SVG charts: these machines are offline, so no chart library from a CDN.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function frame(width, height, testid, label) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  svg.dataset.testid = testid;
  return svg;
}

function hhmm(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

function mmdd(ms) {
  const d = new Date(ms);
  return `${d.getMonth() + 1}/${d.getDate()}`;
}

/**
 * Time-series lines. series: [{name, color, points: [[ms, value]], min, max}]; each series gets its own
 * y range (heart rate and SpO2 differ in scale) with its axis labels on the left/right.
 */
export function lineChart({ series, from, to, width = 640, height = 180, testid = "chart", label = "", days = false, noData = "no data" }) {
  const svg = frame(width, height, testid, label);
  const pad = { l: 36, r: 36, t: 10, b: 22 };
  const W = width - pad.l - pad.r;
  const H = height - pad.t - pad.b;
  const x = (ms) => pad.l + ((ms - from) / (to - from || 1)) * W;
  svg.append(s("rect", { x: pad.l, y: pad.t, width: W, height: H, class: "plot-bg" }));
  const ticks = days ? 7 : 6;
  for (let i = 0; i <= ticks; i++) {
    const ms = from + ((to - from) * i) / ticks;
    const xx = x(ms);
    svg.append(s("line", { x1: xx, x2: xx, y1: pad.t, y2: pad.t + H, class: "grid" }));
    svg.append(s("text", { x: xx, y: height - 6, "text-anchor": "middle", class: "tick" }, days ? mmdd(ms) : hhmm(ms)));
  }
  let any = false;
  series.forEach((se, idx) => {
    const pts = se.points.filter((p) => p[1] !== null && p[1] !== undefined && !Number.isNaN(p[1]));
    if (!pts.length) return;
    any = true;
    const vals = pts.map((p) => p[1]);
    const lo = Math.min(se.min ?? Infinity, ...vals);
    const hi = Math.max(se.max ?? -Infinity, ...vals);
    const y = (v) => pad.t + H - ((v - lo) / (hi - lo || 1)) * H;
    const ax = idx === 0 ? 4 : width - 4;
    const anchor = idx === 0 ? "start" : "end";
    svg.append(s("text", { x: ax, y: pad.t + 10, "text-anchor": anchor, class: "tick", fill: se.color }, String(Math.round(hi))));
    svg.append(s("text", { x: ax, y: pad.t + H, "text-anchor": anchor, class: "tick", fill: se.color }, String(Math.round(lo))));
    // Break the line across gaps longer than 15 minutes (device off the wrist, no data).
    let d = "";
    let prev = null;
    for (const [ms, v] of pts) {
      d += `${prev === null || ms - prev > 15 * 60_000 * (days ? 8 : 1) ? "M" : "L"}${x(ms).toFixed(1)},${y(v).toFixed(1)}`;
      prev = ms;
    }
    const path = s("path", { d, fill: "none", stroke: se.color, "stroke-width": 2, class: "series" });
    path.dataset.series = se.name;
    path.dataset.points = String(pts.length);
    svg.append(path);
    svg.append(s("text", { x: pad.l + 6 + idx * 110, y: pad.t + 14, class: "legend", fill: se.color }, se.name));
  });
  if (!any) svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "nodata" }, noData));
  return svg;
}

/** Bars by day: [{label, value}]. */
export function barChart({ bars, width = 360, height = 160, testid = "bars", label = "", color = "#2f7d32", noData = "no data" }) {
  const svg = frame(width, height, testid, label);
  const pad = { l: 8, r: 8, t: 16, b: 22 };
  const W = width - pad.l - pad.r;
  const H = height - pad.t - pad.b;
  if (!bars.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "nodata" }, noData));
    return svg;
  }
  const max = Math.max(1, ...bars.map((b) => b.value || 0));
  const bw = W / bars.length;
  bars.forEach((b, i) => {
    const bh = ((b.value || 0) / max) * H;
    const xx = pad.l + i * bw;
    const r = s("rect", { x: xx + bw * 0.15, y: pad.t + H - bh, width: bw * 0.7, height: Math.max(bh, 1), fill: color, class: "bar" });
    svg.append(r);
    svg.append(s("text", { x: xx + bw / 2, y: pad.t + H - bh - 3, "text-anchor": "middle", class: "tick" }, String(Math.round(b.value || 0))));
    svg.append(s("text", { x: xx + bw / 2, y: height - 6, "text-anchor": "middle", class: "tick" }, b.label));
  });
  return svg;
}

/** Room-presence timeline: one row per room, a block where the resident was there. spans: [{room, from, to}] */
export function timeline({ spans, from, to, width = 640, testid = "presence", label = "", noData = "no data" }) {
  const rooms = [...new Set(spans.map((sp) => sp.room))];
  const rowH = 18;
  const height = Math.max(40, rooms.length * rowH + 28);
  const svg = frame(width, height, testid, label);
  const pad = { l: 90, r: 20, t: 6 };
  const W = width - pad.l - pad.r;
  const x = (ms) => pad.l + Math.max(0, Math.min(1, (ms - from) / (to - from || 1))) * W;
  if (!spans.length) {
    svg.append(s("text", { x: width / 2, y: 24, "text-anchor": "middle", class: "nodata" }, noData));
    return svg;
  }
  const palette = ["#1565c0", "#6a1b9a", "#2e7d32", "#ef6c00", "#00838f", "#ad1457", "#4e342e"];
  rooms.forEach((room, i) => {
    const y = pad.t + i * rowH;
    svg.append(s("text", { x: pad.l - 6, y: y + 13, "text-anchor": "end", class: "tick" }, room));
    svg.append(s("rect", { x: pad.l, y, width: W, height: rowH - 4, class: "plot-bg" }));
    for (const sp of spans.filter((q) => q.room === room)) {
      const x1 = x(sp.from);
      const x2 = Math.max(x(sp.to), x1 + 2);
      svg.append(s("rect", { x: x1, y, width: x2 - x1, height: rowH - 4, fill: palette[i % palette.length], class: "span" }));
    }
  });
  const yb = pad.t + rooms.length * rowH + 14;
  for (let i = 0; i <= 6; i++) {
    const ms = from + ((to - from) * i) / 6;
    svg.append(s("text", { x: x(ms), y: yb, "text-anchor": "middle", class: "tick" }, hhmm(ms)));
  }
  return svg;
}

const R = 6371000;

/** Metres east/north of home: good enough (equirectangular) for a few kilometres. */
export function offsetMetres(homeLat, homeLon, lat, lon) {
  const rad = Math.PI / 180;
  return {
    e: (lon - homeLon) * rad * R * Math.cos(homeLat * rad),
    n: (lat - homeLat) * rad * R,
  };
}

/** Location trail relative to home with the geofence circle; no map tiles offline. */
export function trailPlot({ home, geofenceM, points, size = 300, testid = "trail", label = "", homeLabel = "home", fenceLabel = "geofence", noData = "no data" }) {
  const svg = frame(size, size, testid, label);
  const c = size / 2;
  svg.append(s("rect", { x: 0, y: 0, width: size, height: size, class: "plot-bg" }));
  if (!home || home.lat === null || home.lat === undefined || !points.length) {
    svg.append(s("text", { x: c, y: c, "text-anchor": "middle", class: "nodata" }, noData));
    return svg;
  }
  const offs = points.map((p) => ({ ...offsetMetres(home.lat, home.lon, p.lat, p.lon), ts: p.ts }));
  const extent = Math.max(geofenceM * 1.25, ...offs.map((o) => Math.hypot(o.e, o.n) * 1.1), 50);
  const k = (c - 12) / extent;
  const px = (o) => [c + o.e * k, c - o.n * k];
  const fence = s("circle", { cx: c, cy: c, r: geofenceM * k, class: "fence" });
  fence.dataset.testid = "geofence";
  svg.append(fence);
  svg.append(s("text", { x: c, y: c - geofenceM * k - 4, "text-anchor": "middle", class: "tick" }, `${fenceLabel} ${Math.round(geofenceM)} m`));
  svg.append(s("text", { x: 6, y: size - 6, class: "tick" }, `↑N  ${Math.round(extent)} m`));
  if (offs.length > 1) {
    svg.append(s("polyline", { points: offs.map((o) => px(o).join(",")).join(" "), class: "trail-line" }));
  }
  offs.forEach((o, i) => {
    const [xx, yy] = px(o);
    const outside = Math.hypot(o.e, o.n) > geofenceM;
    const dot = s("circle", { cx: xx, cy: yy, r: i === offs.length - 1 ? 6 : 3, class: outside ? "pt out" : "pt" });
    dot.dataset.testid = "trail-point";
    svg.append(dot);
  });
  svg.append(s("rect", { x: c - 5, y: c - 5, width: 10, height: 10, class: "home" }));
  svg.append(s("text", { x: c + 8, y: c + 4, class: "tick" }, homeLabel));
  return svg;
}
