// Tiny DOM helpers. Text always goes in as text nodes, never as HTML: payloads, results and
// error messages are arbitrary data from services.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

const STATE_LABEL = { init: "waiting", start: "running", success: "success", fail: "failed",
                      end: "ended" };

export function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-state": state },
           STATE_LABEL[state] || state);
}

export function time(t) {
  if (!t) return "—";
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." +
    String(d.getMilliseconds()).padStart(3, "0");
}

export function duration(a, b) {
  if (!a || !b) return "—";
  const s = b - a;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.round(s / 60)} min`;
}

export function json(value, max = 20000) {
  let text = value === undefined ? "null" : JSON.stringify(value, null, 2);
  if (text.length > max) text = text.slice(0, max) + `\n… (${text.length - max} more characters)`;
  return h("pre", {}, text);
}

export function short(value, max = 80) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? text.slice(0, max) + "…" : text;
}

// headers: [label, "num"?]; rows: arrays of cells (strings or nodes), or {attrs, cells}
export function table(headers, rows, empty = "Nothing yet.") {
  const head = h("tr", {}, headers.map(([label, cls]) => h("th", { class: cls }, label)));
  const row = (r) => {
    const { attrs, cells } = Array.isArray(r) ? { attrs: {}, cells: r } : r;
    return h("tr", attrs, cells.map((cell, i) => h("td", { class: headers[i][1] }, cell)));
  };
  const body = rows.length
    ? rows.map(row)
    : [h("tr", {}, h("td", { class: "empty", colspan: headers.length }, empty))];
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

// "3 s", "4 min", "2 h 5 min", "3 d 4 h": an uptime or an age
export function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// Progress in an update, as the CLI reads it: {done, total} or {progress: 0..1}.
export function progressOf(update) {
  if (!update || typeof update !== "object" || Array.isArray(update)) return null;
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const done = num(update.done), total = num(update.total);
  if (done !== null && total !== null && total > 0) {
    return { done: Math.min(Math.max(done, 0), total), total };
  }
  const fraction = num(update.progress);
  if (fraction !== null && fraction >= 0 && fraction <= 1) return { done: fraction, total: 1 };
  return null;
}

export function progressBar(p) {
  const pct = Math.round((p.done / p.total) * 100);
  const label = p.total === 1 ? `${pct} %` : `${p.done} / ${p.total} (${pct} %)`;
  return h("div", { class: "progress", id: "progress", role: "progressbar",
                    "aria-valuenow": String(pct), "aria-valuemin": "0", "aria-valuemax": "100" },
    h("div", { class: "bar", style: `width: ${pct}%` }), h("span", {}, label));
}

// A modal confirmation: resolves true when the user confirms, false otherwise. Every action
// that changes something (cancel, retry, re-queue, purge) asks first.
export function confirmAction(title, text, okLabel) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", class: "danger", id: "confirm-ok" }, okLabel);
    const no = h("button", { type: "button", id: "confirm-cancel" }, "Keep it");
    const dialog = h("dialog", { class: "confirm", id: "confirm" },
      h("strong", {}, title), h("p", {}, text), h("div", { class: "buttons" }, no, ok));
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    ok.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}
