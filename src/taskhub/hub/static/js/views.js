// The four views. Each takes the <main> element and the route's parameters, draws itself,
// keeps itself live (polling or a stream) and returns a function that stops that.

import { api, ApiError, query } from "./api.js";
import { badge, duration, h, json, replace, short, table, time } from "./dom.js";

const TERMINAL = new Set(["success", "fail", "end"]);
const EVENT_TYPES = ["init", "offer", "pickup", "start", "update", "requeue", "delivery_fail",
                     "drop", "success", "fail", "end"];

// Runs fn now and then every `every` ms, skipping ticks while the tab is hidden (a dashboard
// left open in a background tab costs the hub nothing). Errors go to onError.
function poll(fn, every, onError) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { onError(err); }
    }
    if (!stopped) timer = setTimeout(tick, every);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function errorBox(el, ctx) {
  return (err) => {
    if (err instanceof ApiError && err.status === 401) return ctx.loggedOut();
    replace(el, h("p", { class: "error" }, `Could not load: ${err.message}`));
  };
}

const taskLink = (id) => h("a", { href: `#/task/${id}`, class: "mono" }, id);

function taskRows(tasks) {
  return tasks.map((t) => ({
    attrs: { "data-task": t.id, "data-state": t.state },
    cells: [
      taskLink(t.id), t.action, badge(t.state), t.publisher, time(t.created_at),
      duration(t.started_at || t.created_at, t.ended_at), String(t.updates),
      t.error ? short(t.error.message || t.error.reason, 60)
              : Object.entries(t.groups).map(([g, s]) => `${g}: ${s}`).join(", "),
    ],
  }));
}

const TASK_HEADERS = [["Task"], ["Action"], ["State"], ["Publisher"], ["Created"],
                      ["Duration"], ["Updates", "num"], ["Groups / error"]];

// --- overview -----------------------------------------------------------------------------
export function overview(main, _params, ctx) {
  const head = h("p", { class: "muted" });
  const cards = h("div", { class: "cards" });
  const rates = h("div");
  const queues = h("div");
  const conns = h("div");
  const recent = h("div", { id: "recent" });
  replace(main, h("h1", {}, "Overview"), head, cards,
          h("h2", {}, "Rates, last minute"), rates, h("h2", {}, "Queues"), queues,
          h("h2", {}, "Connected services"), conns,
          h("h2", {}, "Recent tasks ", h("a", { href: "#/tasks" }, "(all)")), recent);
  const card = (n, label, id) =>
    h("div", { class: "card", id }, h("div", { class: "n" }, String(n)),
      h("div", { class: "label" }, label));
  return poll(async () => {
    const [s, tasks] = await Promise.all([api("/stats"), api("/tasks?limit=10")]);
    const c = s.counts;
    const perMin = s.rates.filter((r) => r.group === null);
    const sum = (k) => perMin.reduce((n, r) => n + r[k], 0);
    replace(head, `Hub “${s.hub}” · up since ${new Date(s.started_at * 1000).toLocaleString()}`);
    replace(cards,
      card(c.waiting, "waiting", "count-waiting"), card(c.running, "running", "count-running"),
      card(c.success, "succeeded (since start)", "count-success"),
      card(c.fail, "failed (since start)", "count-fail"),
      card(c.end, "ended, no result", "count-end"),
      card(sum("published"), "published / min"), card(sum("succeeded"), "succeeded / min"),
      card(s.connections.length, "connections"));
    replace(rates, table(
      [["Action"], ["Group"], ["Published", "num"], ["Started", "num"], ["Succeeded", "num"],
       ["Failed", "num"], ["Ended", "num"]],
      s.rates.map((r) => [r.action, r.group ?? h("span", { class: "muted" }, "all groups"),
        ...[r.published, r.started, r.succeeded, r.failed, r.ended].map(String)]),
      "No task events in the last minute."));
    replace(queues, table(
      [["Action"], ["Group"], ["Durable"], ["Workers", "num"], ["In flight / credit", "num"],
       ["Waiting", "num"]],
      s.queues.map((q) => [q.action, q.group, q.durable ? "yes" : "no", String(q.workers),
        `${q.in_flight} / ${q.credit}`, String(q.waiting)]),
      "No group has subscribed yet."));
    replace(conns, table(
      [["Service"], ["Connection"], ["Kind"], ["Subscriptions (in flight / credit)"],
       ["Holding", "num"]],
      s.connections.map((cn) => [cn.service, h("span", { class: "mono" }, cn.id), cn.kind,
        cn.subscriptions.length
          ? cn.subscriptions.map((sub) => h("div", {},
              `${sub.action} [${sub.group}] ${sub.inflight} / ${sub.concurrency}`,
              sub.observe ? " (observer)" : ""))
          : h("span", { class: "muted" }, "none"),
        String(cn.holding)]),
      "No service is connected."));
    replace(recent, table(TASK_HEADERS, taskRows(tasks), "No task yet."));
  }, 1000, errorBox(cards, ctx));
}

// --- task list ----------------------------------------------------------------------------
const STATES = [["", "any state"], ["init", "waiting"], ["start", "running"],
                ["success", "success"], ["fail", "failed"], ["end", "ended"]];

export function tasks(main, params, ctx) {
  const action = h("input", { name: "action", placeholder: "action, e.g. email:send",
                              value: params.get("action") || "", list: "actions" });
  const actions = h("datalist", { id: "actions" });
  const state = h("select", { name: "state" },
    STATES.map(([v, label]) => h("option", { value: v, selected: v === (params.get("state") || "") }, label)));
  const list = h("div", { id: "task-list" });
  const known = new Set();
  let refresh = () => {};
  const changed = () => {
    // keep the filter in the address (linkable) without re-running the router
    history.replaceState(null, "", `#/tasks${query({ action: action.value.trim(), state: state.value })}`);
    refresh();
  };
  action.addEventListener("input", changed);
  state.addEventListener("change", changed);
  replace(main, h("h1", {}, "Tasks"),
    h("div", { class: "filters" }, action, actions, state,
      h("span", { class: "muted" }, "Live and recently ended tasks, newest first.")),
    list);
  const load = async () => {
    const rows = await api(`/tasks${query({ action: action.value.trim(), state: state.value, limit: 200 })}`);
    for (const t of rows) {
      if (!known.has(t.action)) { known.add(t.action); actions.append(h("option", { value: t.action })); }
    }
    replace(list, table(TASK_HEADERS, taskRows(rows), "No task matches."));
  };
  refresh = () => load().catch(errorBox(list, ctx));
  return poll(load, 1000, errorBox(list, ctx));
}

// --- dead letters -------------------------------------------------------------------------
export function deadLetters(main, _params, ctx) {
  const flash = h("div");
  const list = h("div", { id: "dead-list" });
  replace(main, h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Tasks that failed for good. Re-queue publishes a fresh copy."),
    flash, list);
  let load;
  const requeue = async (btn, id) => {
    btn.disabled = true;
    try {
      const out = await api(`/dead-letters/${encodeURIComponent(id)}/requeue`, { method: "POST" });
      replace(flash, h("p", { class: "note", id: "requeued" }, `Re-queued ${id} as `,
                       taskLink(out.task), "."));
      await load();
    } catch (err) {
      btn.disabled = false;
      replace(flash, h("p", { class: "error" }, `Re-queue failed: ${err.message}`));
    }
  };
  load = async () => {
    const rows = await api("/dead-letters");
    replace(list, table(
      [["Task"], ["Action"], ["Publisher"], ["Error"], ["Ended"], [""]],
      rows.map((d) => ({
        attrs: { "data-task": d.id },
        cells: [taskLink(d.id), d.action, d.publisher,
          d.error ? short(`${d.error.type || d.error.reason}: ${d.error.message || ""}`, 90) : "",
          time(d.ended_at),
          h("button", { type: "button", class: "primary", onclick: (e) => requeue(e.target, d.id) },
            "Re-queue")],
      })),
      "No dead letters."));
  };
  return poll(load, 3000, errorBox(list, ctx));
}

// --- one task -----------------------------------------------------------------------------
export function task(main, params, ctx) {
  const id = params.get("id");
  const title = h("h1", {}, "Task ", h("span", { class: "mono" }, id));
  const meta = h("div");
  const payload = h("div");
  const outcome = h("div");
  const updates = h("ol", { class: "timeline", id: "updates" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const status = h("p", { class: "muted" });
  replace(main, title, meta,
    h("div", { class: "cols" },
      h("section", {}, h("h2", {}, "Payload"), payload),
      h("section", {}, h("h2", {}, "Result / error"), outcome)),
    h("h2", {}, "Updates"), updates, h("h2", {}, "Timeline"), timeline, status);
  let first = null;
  let pending = null;

  const show = (t) => {
    replace(meta, h("dl", { class: "meta" },
      h("dt", {}, "Action"), h("dd", {}, t.action),
      h("dt", {}, "State"), h("dd", { id: "task-state" }, badge(t.state)),
      h("dt", {}, "Publisher"), h("dd", {}, t.publisher),
      h("dt", {}, "Created"), h("dd", {}, time(t.created_at)),
      h("dt", {}, "Started"), h("dd", {}, time(t.started_at)),
      h("dt", {}, "Ended"), h("dd", {}, `${time(t.ended_at)}  (${duration(t.created_at, t.ended_at)})`),
      h("dt", {}, "Deliveries"), h("dd", {}, t.deliveries.length
        ? t.deliveries.map((d) => h("div", {}, `${d.group}: ${d.state}, attempt ${d.attempt}, tries ${d.tries}`))
        : "none yet"),
      h("dt", {}, "Options"), h("dd", { class: "mono" }, short(t.options, 200) || "{}")));
    replace(payload, json(t.payload));
    if (t.state === "success") replace(outcome, json(t.result));
    else if (t.error) replace(outcome, h("div", { class: "error" }, short(t.error, 2000)));
    else replace(outcome, h("p", { class: "muted" }, TERMINAL.has(t.state) ? "No result." : "Not finished."));
  };
  const reload = () => {
    // many events arrive in one burst: read the task once for the lot
    clearTimeout(pending);
    pending = setTimeout(() => api(`/tasks/${encodeURIComponent(id)}`).then(show).catch(errorBox(meta, ctx)), 100);
  };
  const onEvent = (msg) => {
    const ev = JSON.parse(msg.data);
    if (first === null) first = ev.at;
    const who = [ev.group && `group ${ev.group}`, ev.service && `by ${ev.service}`].filter(Boolean).join(" ");
    timeline.append(h("li", { "data-type": ev.type },
      h("span", { class: "mono" }, time(ev.at)),
      h("span", { class: "muted mono" }, `+${Math.round((ev.at - first) * 1000)} ms`),
      h("span", { class: `ev-${ev.type}` }, ev.type),
      h("span", {}, who, ev.data !== null && ev.data !== undefined ? ` ${short(ev.data, 160)}` : "")));
    if (ev.type === "update") {
      updates.append(h("li", {}, h("span", { class: "mono" }, time(ev.at)),
        h("span", {}, ""), h("span", { class: "muted" }, ev.service || ""),
        h("span", { class: "mono" }, short(ev.data, 400))));
    }
    if (TERMINAL.has(ev.type)) {
      // the stream ends after the terminal event; without close() EventSource would reconnect
      source.close();
      replace(status, "The task has ended.");
    }
    reload();
  };

  const source = new EventSource(`/v1/dashboard/tasks/${encodeURIComponent(id)}/events`);
  api(`/tasks/${encodeURIComponent(id)}`).then(show).catch((err) => {
    source.close();
    if (err instanceof ApiError && err.status === 401) return ctx.loggedOut();
    replace(main, title, h("p", { class: "error" }, err.message));
  });
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.onmessage = onEvent; // an event type this page does not know yet
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) replace(status, "Reconnecting…");
  };
  return () => { source.close(); clearTimeout(pending); };
}
