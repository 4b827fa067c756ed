// One task (#/task/ID): what it is, its actions (cancel, retry), its progress, every try
// with its error and traceback, a chain's steps, and the live timeline of all its events.

import { api, ApiError } from "./api.js";
import { badge, confirmAction, duration, h, json, progressBar, progressOf, replace, short,
         table, time } from "./dom.js";
import { taskLink } from "./views.js";

const TERMINAL = new Set(["success", "fail", "end"]);
const INTERNAL = new Set(["taskhub:chain", "taskhub:group"]);

function errorView(err, id) {
  if (!err || typeof err !== "object") return h("div", { class: "error" }, short(err, 2000));
  const head = [err.type, err.reason && `(${err.reason})`].filter(Boolean).join(" ");
  return h("div", { class: "error-box", id },
    h("div", { class: "error" }, head ? h("strong", {}, `${head}: `) : null, err.message || ""),
    err.traceback ? h("details", { open: true }, h("summary", {}, "Traceback"),
                      h("pre", { class: "traceback" }, String(err.traceback))) : null);
}

function chainSteps(t) {
  const state = (t.options && t.options.chain) || {};
  const plan = Array.isArray(t.payload) ? t.payload : [];
  const label = { success: "success", fail: "failed", end: "ended" };
  return h("div", { id: "chain-steps" },
    h("p", { class: "muted" }, t.action === "taskhub:group"
      ? "A group: its steps run in parallel; its result is the list of their results."
      : "A chain: each step runs after the previous one, with its result as input."),
    table([["Step", "num"], ["Action"], ["Task"], ["State"]],
      plan.map((step, i) => {
        const id = (state.tasks || [])[i];
        const s = (state.states || [])[i];
        return { attrs: { "data-step": String(i) },
          cells: [String(i), step.action, id ? taskLink(id) : h("span", { class: "muted" }, "not published yet"),
                  s ? label[s] || s : id ? (TERMINAL.has(t.state) ? "stopped" : "running") : "—"] };
      }), "No steps."));
}

export function task(main, params, ctx) {
  const id = params.get("id");
  const kindLabel = h("span", {}, "Task");
  const title = h("h1", {}, kindLabel, " ", h("span", { class: "mono" }, id));
  const bar = h("div", { class: "actions", id: "task-actions" });
  const flash = h("div");
  const meta = h("div");
  const progress = h("div");
  const chain = h("div");
  const payload = h("div");
  const payloadHead = h("h2", {}, "Payload");
  const triesHead = h("h2", {}, "Tries that failed");
  const updatesHead = h("h2", {}, "Updates");
  const outcome = h("div", { id: "outcome" });
  const tries = h("div", { id: "tries" });
  const updates = h("ol", { class: "timeline", id: "updates" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const status = h("p", { class: "muted" });
  replace(main, title, bar, flash, meta, progress, chain,
    h("div", { class: "cols" },
      h("section", {}, payloadHead, payload),
      h("section", {}, h("h2", {}, "Result / error"), outcome)),
    triesHead, tries, updatesHead, updates, h("h2", {}, "Timeline"), timeline, status);
  replace(tries, h("p", { class: "muted" }, "None."));
  const noUpdates = h("li", { class: "muted" }, "None.");
  updates.append(noUpdates);
  let first = null;
  let pending = null;
  let current = null;
  const failedTries = [];

  const act = async (label, path, question, text, done) => {
    if (!(await confirmAction(question, text, label))) return;
    try {
      const out = await api(`/tasks/${encodeURIComponent(id)}/${path}`, { method: "POST" });
      replace(flash, done(out));
      reload();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return ctx.loggedOut();
      replace(flash, h("p", { class: "error" }, `${label} failed: ${err.message}`));
    }
  };
  const showActions = (t) => {
    const buttons = [];
    if (!TERMINAL.has(t.state)) {
      buttons.push(h("button", { type: "button", class: "danger", id: "cancel",
        onclick: () => act("Cancel task", "cancel", `Cancel ${t.action} ${id}?`,
          "It fails with reason \"cancelled\" and its workers are told to stop." +
          (INTERNAL.has(t.action) ? " Its running steps are cancelled too." : ""),
          () => h("p", { class: "note", id: "cancelled" }, "Cancelled.")) }, "Cancel task"));
    }
    if (t.state === "fail" && !INTERNAL.has(t.action)) {
      buttons.push(h("button", { type: "button", class: "primary", id: "retry",
        onclick: () => act("Retry", "retry", `Retry ${t.action} ${id}?`,
          "A fresh copy (a new id, same action, payload and options) is published.",
          (out) => h("p", { class: "note", id: "retried" }, "Published again as ",
                     taskLink(out.task), ".")) }, "Retry"));
    }
    replace(bar, buttons);
  };
  const show = (t) => {
    current = t;
    showActions(t);
    const internal = INTERNAL.has(t.action);
    replace(kindLabel, internal ? (t.action === "taskhub:chain" ? "Chain" : "Group") : "Task");
    replace(payloadHead, internal ? "Plan" : "Payload");
    for (const el of [triesHead, tries, updatesHead, updates]) el.hidden = internal;
    const step = t.options && t.options.chain_task;
    replace(meta, h("dl", { class: "meta" },
      h("dt", {}, "Action"), h("dd", { id: "task-action" }, INTERNAL.has(t.action)
        ? h("span", {}, h("span", { class: "tag" }, t.action === "taskhub:chain" ? "chain" : "group"),
            ` of ${Array.isArray(t.payload) ? t.payload.length : "?"} steps`)
        : t.action),
      step ? [h("dt", {}, "Chain"), h("dd", { id: "task-chain" }, `step ${t.options.chain_step} of `, taskLink(step))] : null,
      h("dt", {}, "State"), h("dd", { id: "task-state" }, badge(t.state)),
      h("dt", {}, "Publisher"), h("dd", {}, t.publisher),
      h("dt", {}, "Created"), h("dd", {}, time(t.created_at)),
      h("dt", {}, "Started"), h("dd", {}, time(t.started_at)),
      h("dt", {}, "Ended"), h("dd", {}, `${time(t.ended_at)}  (${duration(t.created_at, t.ended_at)})`),
      h("dt", {}, "Deliveries"), h("dd", {}, t.deliveries.length
        ? t.deliveries.map((d) => h("div", {}, `${d.group}: ${d.state}, attempt ${d.attempt}, tries ${d.tries}`))
        : INTERNAL.has(t.action) ? "none: the hub runs it" : "none yet"),
      h("dt", {}, "Options"), h("dd", { class: "mono" },
        short(Object.fromEntries(Object.entries(t.options || {}).filter(([k]) => k !== "chain")), 200) || "{}")));
    const p = progressOf(t.last_update);
    replace(progress, p ? [h("h2", {}, "Progress"), progressBar(p)] : []);
    replace(chain, INTERNAL.has(t.action) ? [h("h2", {}, "Steps"), chainSteps(t)] : []);
    replace(payload, json(t.payload));
    if (t.state === "success") replace(outcome, json(t.result));
    else if (t.error) replace(outcome, errorView(t.error, "task-error"));
    else replace(outcome, h("p", { class: "muted" }, TERMINAL.has(t.state) ? "No result." : "Not finished."));
  };
  const reload = () => {
    // many events arrive in one burst: read the task once for the lot
    clearTimeout(pending);
    pending = setTimeout(() => api(`/tasks/${encodeURIComponent(id)}`).then(show).catch(() => {}), 100);
  };
  const addTry = (ev) => {
    // a `retry` carries {error, in, tries}; a `delivery_fail` carries the error itself
    const err = ev.type === "retry" ? (ev.data || {}).error : ev.data;
    const n = failedTries.length + 1;
    failedTries.push(ev);
    if (n === 1) replace(tries);
    tries.append(h("div", { class: "try", "data-type": ev.type },
      h("div", { class: "muted" }, `Try ${n} · ${time(ev.at)}`,
        ev.group ? ` · group ${ev.group}` : "", ev.service ? ` · by ${ev.service}` : "",
        ev.type === "retry" ? ` · retried in ${(ev.data || {}).in} s` : " · failed for good"),
      errorView(err || {}, null)));
  };
  const onEvent = (msg) => {
    const ev = JSON.parse(msg.data);
    if (first === null) first = ev.at;
    const who = [ev.group && `group ${ev.group}`, ev.service && `by ${ev.service}`].filter(Boolean).join(" ");
    const d = ev.data;
    const data = ev.type === "retry" && d && d.error
      ? `try ${d.tries} failed (${d.error.type || ""}: ${d.error.message || ""}), again in ${d.in} s`
      : ev.type === "step" && d && d.task
        ? `step ${d.index} (${d.action}) ${d.task} ${d.state ? `ended: ${d.state}` : "published"}`
        : (ev.type === "fail" || ev.type === "delivery_fail") && d && typeof d === "object"
          ? short(`${[d.type, d.reason && `(${d.reason})`].filter(Boolean).join(" ")}: ${d.message || ""}`, 160)
          : d !== null && d !== undefined ? short(d, 160) : "";
    timeline.append(h("li", { "data-type": ev.type },
      h("span", { class: "mono" }, time(ev.at)),
      h("span", { class: "muted mono" }, `+${Math.round((ev.at - first) * 1000)} ms`),
      h("span", { class: `ev-${ev.type}` }, ev.type),
      h("span", {}, who, data ? ` ${data}` : "")));
    if (ev.type === "update") {
      noUpdates.remove();
      const p = progressOf(ev.data);
      updates.append(h("li", {}, h("span", { class: "mono" }, time(ev.at)),
        h("span", {}, p ? `${Math.round((p.done / p.total) * 100)} %` : ""),
        h("span", { class: "muted" }, ev.service || ""),
        h("span", { class: "mono" }, short(ev.data, 400))));
      if (p && current && !TERMINAL.has(current.state)) replace(progress, [h("h2", {}, "Progress"), progressBar(p)]);
    }
    if (ev.type === "retry" || ev.type === "delivery_fail") addTry(ev);
    if (TERMINAL.has(ev.type)) {
      // the stream ends after the terminal event; without close() EventSource would reconnect
      source.close();
      replace(status, "The task has ended.");
    }
    reload();
  };

  // Every event comes as a plain message with its type in its data, so no type is missed.
  const source = new EventSource(`/v1/dashboard/tasks/${encodeURIComponent(id)}/events`);
  api(`/tasks/${encodeURIComponent(id)}`).then(show).catch((err) => {
    source.close();
    if (err instanceof ApiError && err.status === 401) return ctx.loggedOut();
    replace(main, title, h("p", { class: "error" }, err.message));
  });
  source.onmessage = onEvent;
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) replace(status, "Reconnecting…");
  };
  return () => { source.close(); clearTimeout(pending); };
}
