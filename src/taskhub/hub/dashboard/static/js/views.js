// The list views. Each takes the <main> element and the route's parameters, draws itself,
// keeps itself live (polling) and returns a function that stops that. The task page is in
// task.js, the workers in workers.js.

import { api, ApiError, query } from "./api.js";
import { charts } from "./charts.js";
import { badge, confirmAction, duration, h, replace, short, table, time } from "./dom.js";

// Runs fn now and then every `every` ms, skipping ticks while the tab is hidden (a dashboard
// left open in a background tab costs the hub nothing). Errors go to onError.
export function poll(fn, every, onError) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { onError(err); }
    }
    if (!stopped) timer = setTimeout(tick, typeof every === "function" ? every() : every);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export function errorBox(el, ctx) {
  return (err) => {
    if (err instanceof ApiError && err.status === 401) return ctx.loggedOut();
    replace(el, h("p", { class: "error" }, `Could not load: ${err.message}`));
  };
}

export const taskLink = (id) => h("a", { href: `#/task/${id}`, class: "mono" }, id);

const KIND_LABEL = { chain: "chain", group: "group" };

function taskRows(tasks) {
  return tasks.map((t) => ({
    attrs: { "data-task": t.id, "data-state": t.state, "data-kind": t.kind },
    cells: [
      taskLink(t.id),
      h("span", {}, KIND_LABEL[t.kind] ? h("span", { class: "tag" }, KIND_LABEL[t.kind]) : t.action,
        t.chain ? h("a", { class: "tag", href: `#/task/${t.chain.task}`, title: "its chain" },
                    `step ${t.chain.step}`) : null),
      badge(t.state), t.publisher, time(t.created_at),
      duration(t.started_at || t.created_at, t.ended_at), String(t.updates),
      t.error ? short(`${t.error.type ? t.error.type + ": " : ""}${t.error.message || t.error.reason}`, 70)
              : Object.entries(t.groups).map(([g, s]) => `${g}: ${s}`).join(", "),
    ],
  }));
}

const TASK_HEADERS = [["Task"], ["Action"], ["State"], ["Publisher"], ["Created"],
                      ["Duration"], ["Updates", "num"], ["Groups / error"]];

async function purgeQueue(flash, q) {
  const ok = await confirmAction(`Purge ${q.action} [${q.group}]?`,
    `The ${q.waiting} waiting deliveries of group ${q.group} fail with reason "purged". ` +
    "Tasks a worker holds are left to it.", "Purge");
  if (!ok) return;
  try {
    const out = await api(`/queues/${encodeURIComponent(q.action)}/${encodeURIComponent(q.group)}/purge`,
                          { method: "POST" });
    replace(flash, h("p", { class: "note", id: "purged" },
      `Purged ${out.purged} waiting deliveries of ${out.action} [${out.group}].`));
  } catch (err) {
    replace(flash, h("p", { class: "error" }, `Purge failed: ${err.message}`));
  }
}

// --- overview -----------------------------------------------------------------------------
const SPANS = [["5m", "5 minutes"], ["15m", "15 minutes"], ["1h", "1 hour"], ["6h", "6 hours"],
               ["24h", "24 hours"]];

export function overview(main, params, ctx) {
  const head = h("p", { class: "muted" });
  const cards = h("div", { class: "cards" });
  const rates = h("div", { id: "rates" });
  const queues = h("div", { id: "queues" });
  const flash = h("div");
  const recent = h("div", { id: "recent" });
  const spanSelect = h("select", { name: "span", id: "span" },
    SPANS.map(([v, label]) => h("option", { value: v, selected: v === (params.get("span") || "5m") }, label)));
  const chartBox = h("div", { class: "charts" },
    h("section", {}, h("h3", {}, "Tasks per second"), h("div", { id: "chart-rates", class: "chart" })),
    h("section", {}, h("h3", {}, "Wait and run time (tasks that ended)"),
      h("div", { id: "chart-times", class: "chart" })));
  replace(main, h("h1", {}, "Overview"), head, cards,
          h("h2", {}, "Over time ", spanSelect), chartBox,
          h("h2", {}, "Rates, last minute"), rates,
          h("h2", {}, "Queues"), flash, queues,
          h("h2", {}, "Recent tasks ", h("a", { href: "#/tasks" }, "(all)")), recent);
  const card = (n, label, id) =>
    h("div", { class: "card", id }, h("div", { class: "n" }, String(n)),
      h("div", { class: "label" }, label));
  const plot = charts(chartBox);
  const loadSeries = async () => plot.update(await api(`/series?span=${spanSelect.value}`));
  spanSelect.addEventListener("change", () => {
    history.replaceState(null, "", `#/${query({ span: spanSelect.value })}`);
    loadSeries().catch(errorBox(flash, ctx));
  });
  // a point a second up to 15 minutes: redraw every second; a point a minute: every 10 s
  const stopSeries = poll(loadSeries, () => (["5m", "15m"].includes(spanSelect.value) ? 1000 : 10000),
                          errorBox(flash, ctx));
  const stopStats = poll(async () => {
    const [s, tasks] = await Promise.all([api("/stats"), api("/tasks?limit=10")]);
    const c = s.counts;
    const sum = (k) => s.rates.reduce((n, r) => n + r[k], 0);
    const workers = s.connections.filter((cn) => cn.subscriptions.some((x) => !x.observe)).length;
    // With several hubs the numbers are the deployment's: say whose, and what is left out.
    const others = s.hubs.length > 1 ? ` · with ${s.hubs.slice(1).map((x) => `“${x.name}”`).join(", ")}` : "";
    replace(head, `Hub “${s.hub}” · up since ${new Date(s.started_at * 1000).toLocaleString()}${others}`,
      s.missing.length
        ? h("div", { id: "missing", class: "error" },
            `Not counted: partition${s.missing.length > 1 ? "s" : ""} ${s.missing.join(", ")} ` +
            "(no hub leads them right now, or their hub did not answer)")
        : null);
    replace(cards,
      card(c.waiting, "waiting", "count-waiting"), card(c.running, "running", "count-running"),
      card(c.success, "succeeded (since start)", "count-success"),
      card(c.fail, "failed (since start)", "count-fail"),
      card(c.end, "ended, no result", "count-end"),
      card(c.chains, "chains running", "count-chains"),
      card(sum("published"), "published / min"), card(sum("succeeded"), "succeeded / min"),
      h("a", { href: "#/workers", class: "card-link" }, card(workers, "workers", "count-workers")));
    replace(rates, table(
      [["Action"], ["Published", "num"], ["Started", "num"], ["Succeeded", "num"],
       ["Failed", "num"], ["Ended", "num"], ["Groups (started · failed tries)"]],
      s.rates.map((r) => ({
        attrs: { "data-action": r.action },
        cells: [r.action, ...[r.published, r.started, r.succeeded, r.failed, r.ended].map(String),
          r.groups.map((g) => h("div", {}, `${g.group}: ${g.started} · ${g.failed}`))],
      })),
      "No task events in the last minute."));
    replace(queues, table(
      [["Action"], ["Group"], ["Durable"], ["Workers", "num"], ["In flight / credit", "num"],
       ["Waiting", "num"], [""]],
      s.queues.map((q) => ({
        attrs: { "data-queue": `${q.action} ${q.group}` },
        cells: [q.action, q.group, q.durable ? "yes" : "no", String(q.workers),
          `${q.in_flight} / ${q.credit}`, String(q.waiting),
          h("button", { type: "button", class: "danger small", disabled: q.waiting === 0,
                        onclick: () => purgeQueue(flash, q) }, "Purge")],
      })),
      "No group has subscribed yet."));
    replace(recent, table(TASK_HEADERS, taskRows(tasks.tasks), "No task yet."));
  }, 1000, errorBox(cards, ctx));
  return () => { stopStats(); stopSeries(); plot.stop(); };
}

// --- task list and search -----------------------------------------------------------------
const STATES = [["", "any state"], ["init", "waiting"], ["start", "running"],
                ["success", "success"], ["fail", "failed"], ["end", "ended"]];
const KINDS = [["task", "tasks"], ["chain", "chains and groups"], ["all", "tasks and chains"]];
const SEARCH_FIELDS = ["id", "publisher", "since", "until", "error"];

// <input type=datetime-local> speaks local time without a zone; the API speaks Unix seconds.
const toLocalInput = (t) => {
  if (!t) return "";
  const d = new Date(Number(t) * 1000);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
};
const fromLocalInput = (v) => (v ? String(new Date(v).getTime() / 1000) : "");

export function tasks(main, params, ctx, { kind: fixedKind } = {}) {
  const field = (name, attrs) => h("input", { name, value: params.get(name) || "", ...attrs });
  const id = field("id", { placeholder: "task id", class: "mono", size: 28 });
  const action = field("action", { placeholder: "action, e.g. email:send", list: "actions" });
  const publisher = field("publisher", { placeholder: "publisher" });
  const error = field("error", { placeholder: "error text" });
  const since = h("input", { name: "since", type: "datetime-local", step: 1,
                             value: toLocalInput(params.get("since")), title: "created from" });
  const until = h("input", { name: "until", type: "datetime-local", step: 1,
                             value: toLocalInput(params.get("until")), title: "created until" });
  const actions = h("datalist", { id: "actions" });
  const state = h("select", { name: "state" },
    STATES.map(([v, label]) => h("option", { value: v, selected: v === (params.get("state") || "") }, label)));
  const kind = h("select", { name: "kind" },
    KINDS.map(([v, label]) => h("option", { value: v, selected: v === (fixedKind || params.get("kind") || "task") }, label)));
  const submit = h("button", { type: "submit", class: "primary" }, "Search");
  const clear = h("button", { type: "button" }, "Clear");
  const mode = h("p", { class: "muted", id: "list-mode" });
  const list = h("div", { id: "task-list" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "More");
  const form = h("form", { class: "filters", id: "search" },
    id, action, actions, state, kind, publisher, error,
    h("label", { class: "muted" }, "from ", since), h("label", { class: "muted" }, "to ", until),
    submit, clear);
  const values = () => ({
    id: id.value.trim(), action: action.value.trim(), state: state.value, kind: kind.value,
    publisher: publisher.value.trim(), error: error.value.trim(),
    since: fromLocalInput(since.value), until: fromLocalInput(until.value),
  });
  const searching = (v) => SEARCH_FIELDS.some((k) => v[k] !== "");
  const known = new Set();
  let rows = [];
  let next = null;
  const draw = (v) => {
    for (const t of rows) {
      if (!known.has(t.action)) { known.add(t.action); actions.append(h("option", { value: t.action })); }
    }
    replace(mode, searching(v)
      ? `Search of the stored tasks, oldest first: ${rows.length} found${next ? " so far" : ""}.`
      : "Live and recently ended tasks, newest first (refreshed every second).");
    replace(list, table(TASK_HEADERS, taskRows(rows), "No task matches."));
    more.hidden = !next;
  };
  const load = async (append = false) => {
    const v = values();
    const page = await api(`/tasks${query({ ...v, limit: 200, after: append ? next : undefined })}`);
    rows = append ? rows.concat(page.tasks) : page.tasks;
    next = page.next;
    draw(v);
  };
  let stopPoll = () => {};
  const start = () => {
    stopPoll();
    const v = values();
    // keep the filter in the address (linkable) without re-running the router
    const base = fixedKind ? "#/chains" : "#/tasks";
    history.replaceState(null, "", base + query(fixedKind ? { ...v, kind: undefined } : v));
    if (searching(v)) {
      stopPoll = () => {};
      load().catch(errorBox(list, ctx));
    } else {
      stopPoll = poll(load, 1000, errorBox(list, ctx));
    }
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); start(); });
  for (const el of [state, kind]) el.addEventListener("change", start);
  action.addEventListener("change", start);
  clear.addEventListener("click", () => {
    for (const el of [id, action, publisher, error, since, until]) el.value = "";
    state.value = "";
    start();
  });
  more.addEventListener("click", () => load(true).catch(errorBox(list, ctx)));
  if (fixedKind) kind.hidden = true;
  replace(main, h("h1", {}, fixedKind ? "Chains and groups" : "Tasks"), form, mode, list, more);
  start();
  return () => stopPoll();
}

export const chains = (main, params, ctx) => tasks(main, params, ctx, { kind: "chain" });

// --- dead letters -------------------------------------------------------------------------
export function deadLetters(main, _params, ctx) {
  const flash = h("div");
  const list = h("div", { id: "dead-list" });
  replace(main, h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Tasks that failed for good. Re-queue publishes a fresh copy."),
    flash, list);
  let load;
  const requeue = async (btn, id) => {
    if (!(await confirmAction(`Re-queue ${id}?`,
      "A fresh copy (a new id, same action, payload and options) is published, and the dead letter is removed.",
      "Re-queue"))) return;
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
