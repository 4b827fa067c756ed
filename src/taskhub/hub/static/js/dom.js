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
