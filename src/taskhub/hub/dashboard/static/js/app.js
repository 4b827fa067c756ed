// Entry point: the login form, the hash router (#/, #/tasks, #/chains, #/workers,
// #/dead-letters, #/task/ID)
// and the header. No framework and no build step: the browser loads these modules as is.

import { api, ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import { task } from "./task.js";
import { chains, deadLetters, overview, tasks } from "./views.js";
import { workers } from "./workers.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logoutButton = document.getElementById("logout");
let stopView = () => {};

const ctx = { loggedOut: () => showLogin("Your session has ended; log in again.") };

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const params = new URLSearchParams(search || "");
  const m = path.match(/^\/task\/([^/]+)$/);
  if (m) {
    params.set("id", decodeURIComponent(m[1]));
    return [task, params, "tasks"];
  }
  if (path === "/tasks") return [tasks, params, "tasks"];
  if (path === "/chains") return [chains, params, "chains"];
  if (path === "/workers") return [workers, params, "workers"];
  if (path === "/dead-letters") return [deadLetters, params, "dead-letters"];
  return [overview, params, "overview"];
}

function render() {
  stopView();
  const [view, params, name] = route();
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.view === name);
  stopView = view(main, params, ctx) || (() => {});
}

function showApp(session) {
  nav.hidden = false;
  who.textContent = session.open_access ? "open access (no credentials configured)" : session.name;
  logoutButton.hidden = session.open_access;
  window.addEventListener("hashchange", render);
  render();
}

function showLogin(message, kind = "error") {
  stopView();
  stopView = () => {};
  window.removeEventListener("hashchange", render);
  nav.hidden = true;
  logoutButton.hidden = true;
  who.textContent = "";
  const error = h("p", { class: kind, id: "login-error", hidden: !message }, message || "");
  const name = h("input", { name: "name", autocomplete: "username", required: true });
  const key = h("input", { name: "key", type: "password", autocomplete: "current-password",
                           required: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "login", id: "login" },
    h("strong", {}, "Log in to TaskHub"),
    h("span", { class: "muted" }, "A credential with the admin permission."),
    error,
    h("label", {}, "Name", name), h("label", {}, "Key", key), submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      const session = await api("/login", { method: "POST", body: { name: name.value, key: key.value } });
      showApp(session);
    } catch (err) {
      submit.disabled = false;
      error.hidden = false;
      error.className = "error";
      if (err instanceof ApiError && err.status === 401) error.textContent = "Wrong name or key.";
      else if (err instanceof ApiError && err.status === 403) {
        error.textContent = `Refused: ${err.message}`;
      } else error.textContent = `Could not log in: ${err.message}`;
    }
  });
  replace(main, form);
  name.focus();
}

logoutButton.addEventListener("click", async () => {
  await api("/logout", { method: "POST" }).catch(() => {});
  showLogin("Logged out.", "note");
});

api("/session").then(showApp).catch((err) => {
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) showLogin();
  else replace(main, h("p", { class: "error" }, `The hub did not answer: ${err.message}`));
});
