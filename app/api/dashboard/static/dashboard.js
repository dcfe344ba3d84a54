// The dashboard: read the controls, call the metrics routes, fill each section.
// <body data-state> is "loading", then "ready", or "needs-key" while the key form is shown;
// each <section data-state> is "ready", "unavailable" (404), "needs-key" or "error".

import { NeedsKey, NotAvailable, getJSON, key } from "/dashboard/api.js";
import { note } from "/dashboard/format.js";
import * as sections from "/dashboard/sections.js";

const $ = (selector) => document.querySelector(selector);

// Each section: the route it reads (with the controls' params) and how it is drawn.
const SOURCES = {
  metrics: (c) => getJSON("/v1/metrics", { tenant: c.tenant }),
  layers: (c) => getJSON("/v1/metrics/layers", { tenant: c.tenant }),
  history: (c) => getJSON("/v1/metrics/history", { tenant: c.tenant, bucket: c.bucket }),
  nearMisses: (c) => getJSON("/v1/metrics/near-misses", { tenant: c.tenant, limit: 50 }),
  topEntries: (c) => getJSON("/v1/metrics/top-entries", { tenant: c.tenant, limit: 20 }),
};
const SECTIONS = [
  ["totals", "metrics", sections.totals],
  ["savings", "metrics", sections.savings],
  ["latency", "metrics", sections.latency],
  ["layers", "layers", sections.layers],
  ["history", "history", sections.history],
  ["near-misses", "nearMisses", sections.nearMisses],
  ["top-entries", "topEntries", sections.topEntries],
];

function controls() {
  return { tenant: $("#tenant").value.trim(), bucket: $("#bucket").value };
}

// The controls live in the page's own query string too, so a reload or a link keeps them.
function restoreControls() {
  const params = new URLSearchParams(window.location.search);
  $("#tenant").value = params.get("tenant") ?? "";
  if (params.get("bucket") === "day") $("#bucket").value = "day";
}

function saveControls({ tenant, bucket }) {
  const params = new URLSearchParams();
  if (tenant) params.set("tenant", tenant);
  if (bucket !== "hour") params.set("bucket", bucket);
  const query = params.toString();
  window.history.replaceState(null, "", `${window.location.pathname}${query ? `?${query}` : ""}`);
}

function fill(name, state, nodes) {
  const section = $(`section[data-section="${name}"]`);
  section.dataset.state = state;
  section.querySelector("[data-body]").replaceChildren(...nodes);
}

function show(name, result, draw) {
  if (result.status === "fulfilled") {
    try {
      fill(name, "ready", draw(result.value));
    } catch (error) {
      // An answer of another shape (an older or newer Sentinel): say so, keep the rest.
      fill(name, "error", [note(`cannot show this answer: ${error.message}`, "error")]);
    }
    return;
  }
  const error = result.reason;
  if (error instanceof NotAvailable) {
    fill(name, "unavailable", [note("not available on this Sentinel", "unavailable")]);
  } else if (error instanceof NeedsKey) {
    fill(name, "needs-key", [note("needs the admin key", "needs-key")]);
  } else {
    fill(name, "error", [note(`failed: ${error.message}`, "error")]);
  }
}

function askForKey(message) {
  const form = $("#key-form");
  $("#key-message").textContent = message;
  form.hidden = false;
  $("#key").focus();
}

let generation = 0;

async function refresh() {
  const current = ++generation;
  const chosen = controls();
  saveControls(chosen);
  document.body.dataset.state = "loading";
  $("#status").textContent = "loading…";
  const names = Object.keys(SOURCES);
  const settled = await Promise.allSettled(names.map((n) => SOURCES[n](chosen)));
  if (current !== generation) return; // a newer refresh started meanwhile: it draws
  const results = Object.fromEntries(names.map((n, i) => [n, settled[i]]));
  for (const [name, source, draw] of SECTIONS) show(name, results[source], draw);

  const refused = settled.find((r) => r.status === "rejected" && r.reason instanceof NeedsKey);
  const sent = key.get();
  $("#forget-key").hidden = !sent;
  const suggestions = sections.tenantsIn(results.nearMisses.value, results.topEntries.value);
  $("#tenants").replaceChildren(...suggestions.map((t) => Object.assign(document.createElement("option"), { value: t })));
  if (refused) {
    askForKey(sent ? `The key was refused: ${refused.reason.message}` : "These metrics need the admin key. It is kept in this tab only (sessionStorage).");
    document.body.dataset.state = "needs-key";
    $("#status").textContent = "waiting for a key";
    return;
  }
  $("#key-form").hidden = true;
  document.body.dataset.state = "ready";
  $("#status").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC${chosen.tenant ? `, tenant ${chosen.tenant}` : ""}`;
}

function start() {
  restoreControls();
  $("#scope").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  $("#bucket").addEventListener("change", () => refresh());
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#key").value.trim();
    if (!value) return;
    key.set(value);
    $("#key").value = "";
    refresh();
  });
  $("#forget-key").addEventListener("click", () => {
    key.forget();
    refresh();
  });
  refresh();
}

start();
