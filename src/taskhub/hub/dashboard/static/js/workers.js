// Workers as users think of them: each connected process (host, pid, client version), what it
// subscribes to with its credit, what it has done and what it holds now. Pull consumers too.

import { api } from "./api.js";
import { h, replace, span, table } from "./dom.js";
import { errorBox, poll, taskLink } from "./views.js";

export function workers(main, _params, ctx) {
  const list = h("div", { id: "worker-list" });
  replace(main, h("h1", {}, "Workers"),
    h("p", { class: "muted" },
      "Every connection: worker processes, publishers and pull consumers. Host, pid and version " +
      "come from the client's hello; older clients show only the address they came from."),
    list);
  return poll(async () => {
    const conns = await api("/connections");
    replace(list, table(
      [["Service"], ["Host / pid"], ["Client", "nowrap"], ["Up", "nowrap"],
       ["Subscriptions (in flight / credit)"],
       ["Processed", "num"], ["Failed", "num"], ["Current tasks"]],
      conns.map((c) => ({
        attrs: { "data-connection": c.id, "data-service": c.service, "data-kind": c.kind },
        cells: [
          h("div", {}, h("strong", {}, c.service),
            h("div", { class: "muted mono", title: "connection id" }, c.id)),
          h("div", { class: "host" },
            c.host ? h("span", { class: "mono" }, `${c.host}`) : h("span", { class: "muted" }, "—"),
            c.pid != null ? h("span", { class: "mono pid" }, ` pid ${c.pid}`) : null,
            c.remote ? h("div", { class: "muted mono" }, c.remote) : null,
            c.hub ? h("div", { class: "muted hub" }, `on hub ${c.hub}`) : null),
          c.kind === "pull"
            ? h("div", {}, "pull consumer",
                h("div", { class: "muted" }, `${c.leases} leased · last call ${span(Date.now() / 1000 - c.last_seen)} ago`))
            : h("div", {}, c.client ? `${c.client} ${c.version || ""}` : h("span", { class: "muted" }, "unknown")),
          span(c.uptime),
          c.subscriptions.length
            ? c.subscriptions.map((s) => h("div", { class: "sub" },
                `${s.action} [${s.group}] ${s.inflight} / ${s.concurrency}`,
                s.observe ? h("span", { class: "muted" }, " (observer)") : ""))
            : h("span", { class: "muted" }, "none (a publisher)"),
          String(c.processed), String(c.failed),
          c.current.length
            ? c.current.map((t) => h("div", {}, taskLink(t.task), ` ${t.action} `,
                h("span", { class: "muted" }, t.state === "started" ? "running" : "offered")))
            : h("span", { class: "muted" }, "idle"),
        ],
      })),
      "No service is connected."));
  }, 1000, errorBox(list, ctx));
}
