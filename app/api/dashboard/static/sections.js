// What each section shows, built from the JSON of its route (shapes: notes of issue 14).

import { barChart, lineChart } from "/dashboard/charts.js";
import { card, formats, metric, note, prompt, table, when } from "/dashboard/format.js";

const OUTCOMES = ["hit", "exact", "semantic", "miss", "error"];
const LAYERS = ["exact_lookup", "alias", "embed", "knn", "judge", "provider", "store"];
const PERCENTILES = [
  { name: "p50", cls: "s-p50" },
  { name: "p95", cls: "s-p95" },
];
const ms = (v) => (v === null ? "–" : formats.ms(v));

// GET /v1/metrics: the counters.
export function totals(m) {
  return [
    card("requests", "requests", m.requests, "count"),
    card("hit rate", "hit_rate", m.hit_rate, "percent"),
    card("exact hits", "exact_hits", m.exact_hits, "count"),
    card("semantic hits", "semantic_hits", m.semantic_hits, "count"),
    card("misses", "misses", m.misses, "count"),
    card("errors", "errors", m.errors, "count"),
    card("upstream calls", "upstream_calls", m.upstream_calls, "count"),
    card("upstream errors", "upstream_errors", m.upstream_errors, "count"),
    card("cached entries", "entries", m.entries, "count"),
  ];
}

// GET /v1/metrics: what the cache saved and what the misses cost.
export function savings(m) {
  return [
    card("saved", "usd_saved", m.usd_saved, "usd"),
    card("spent on misses", "usd_spent", m.usd_spent, "usd"),
    card("tokens saved", "tokens_saved", m.tokens_saved, "count"),
    note(`prices: ${m.price_source}`, "source"),
  ];
}

// Percentile bars and a table under them; `rows` is [[name, {count, p50, p95}]].
function percentiles(title, prefix, rows) {
  const chart = barChart({
    title,
    rows: rows.map(([name, s]) => ({ label: name, values: [s.p50, s.p95] })),
    series: PERCENTILES,
    format: ms,
  });
  const columns = [
    { title: "", cell: ([name]) => name },
    { title: "count", cell: ([name, s]) => metric(`${prefix}.${name}.count`, s.count, "count") },
    { title: "p50", cell: ([name, s]) => metric(`${prefix}.${name}.p50`, s.p50, "ms") },
    { title: "p95", cell: ([name, s]) => metric(`${prefix}.${name}.p95`, s.p95, "ms") },
  ];
  return [chart, table(columns, rows)];
}

// GET /v1/metrics latency_ms: end to end, by outcome.
export function latency(m) {
  const known = OUTCOMES.filter((name) => name in m.latency_ms);
  const rows = [...known, ...Object.keys(m.latency_ms).filter((n) => !known.includes(n))];
  return percentiles("request latency (ms)", "latency", rows.map((n) => [n, m.latency_ms[n]]));
}

// GET /v1/metrics/layers: where a request's time goes (this process only).
export function layers(l) {
  const names = Object.keys(l.latency_ms);
  names.sort((a, b) => (LAYERS.indexOf(a) + 1 || 99) - (LAYERS.indexOf(b) + 1 || 99));
  if (names.length === 0) return [note("no layer timings yet", "empty")];
  const shown = percentiles("layer latency (ms)", "layers", names.map((n) => [n, l.latency_ms[n]]));
  return [...shown, note("this Sentinel process only", "source")];
}

// GET /v1/metrics/history: hit rate and cost per 1,000 requests, bucket by bucket.
export function history(h) {
  const buckets = h.buckets;
  const count = metric("history.buckets", buckets.length, "count");
  if (buckets.length === 0) return [note("no requests in this period", "empty"), count];
  const labels = buckets.map((b) => (h.bucket === "day" ? b.start.slice(5, 10) : b.start.slice(5, 16).replace("T", " ")));
  const hitRate = lineChart({
    title: "hit rate",
    labels,
    max: 1,
    format: formats.percent,
    series: [
      { name: "total", cls: "s-total", values: buckets.map((b) => b.hit_rate.total) },
      { name: "exact", cls: "s-exact", values: buckets.map((b) => b.hit_rate.exact) },
      { name: "semantic", cls: "s-semantic", values: buckets.map((b) => b.hit_rate.semantic) },
    ],
  });
  const cost = lineChart({
    title: "cost per 1,000 requests (USD)",
    labels,
    format: formats.usd,
    series: [{ name: "cost / 1,000", cls: "s-cost", values: buckets.map((b) => b.cost_per_1000_usd) }],
  });
  const columns = [
    { title: `${h.bucket} (UTC)`, cell: (b) => when(b.start) },
    { title: "requests", cell: (b) => metric("history.requests", b.requests, "count") },
    { title: "exact", cell: (b) => metric("history.exact_hits", b.exact_hits, "count") },
    { title: "semantic", cell: (b) => metric("history.semantic_hits", b.semantic_hits, "count") },
    { title: "misses", cell: (b) => metric("history.misses", b.misses, "count") },
    { title: "hit rate", cell: (b) => metric("history.hit_rate", b.hit_rate.total, "percent") },
    { title: "cost / 1,000", cell: (b) => metric("history.cost_per_1000_usd", b.cost_per_1000_usd, "usd") },
    { title: "saved", cell: (b) => metric("history.saved_usd", b.saved_usd, "usd") },
    { title: "p95", cell: (b) => metric("history.p95_latency_ms", b.p95_latency_ms, "ms") },
  ];
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.append(count, ` ${h.bucket} buckets`);
  details.append(summary, table(columns, buckets));
  const charts = document.createElement("div");
  charts.className = "charts";
  charts.append(hitRate, cost);
  return [charts, details];
}

function counted(count, what) {
  const p = note("", "source");
  p.append(count, ` ${what}`);
  return p;
}

// GET /v1/metrics/near-misses: candidates a layer refused, next to the prompt they resembled.
export function nearMisses(n) {
  const rows = n.near_misses;
  const count = metric("near_misses.count", rows.length, "count");
  if (rows.length === 0) return [note("no rejections recorded", "empty"), count];
  const columns = [
    { title: "at (UTC)", cell: (r) => when(r.at) },
    { title: "stage", cell: (r) => r.stage },
    { title: "similarity", cell: (r) => metric("near_miss.similarity", r.similarity, "score") },
    { title: "guard", cell: (r) => metric("near_miss.guard_score", r.guard_score, "score") },
    { title: "verifier", cell: (r) => metric("near_miss.verifier_score", r.verifier_score, "score") },
    { title: "asked", cell: (r) => prompt("near_miss.prompt", r.prompt) },
    { title: "nearest cached prompt", cell: (r) => prompt("near_miss.nearest_prompt", r.nearest_prompt) },
    { title: "tenant", cell: (r) => r.tenant || "–" },
  ];
  return [table(columns, rows), counted(count, "rejections, newest first")];
}

// GET /v1/metrics/top-entries: the entries that answered most.
export function topEntries(t) {
  const rows = t.entries;
  const count = metric("top_entries.count", rows.length, "count");
  if (rows.length === 0) return [note("no entries have been hit yet", "empty"), count];
  const columns = [
    { title: "hits", cell: (e) => metric("top_entry.hits", e.hits, "count") },
    { title: "prompt", cell: (e) => prompt("top_entry.prompt", e.prompt) },
    { title: "model", cell: (e) => e.model },
    { title: "tenant", cell: (e) => e.tenant || "–" },
    { title: "expires in", cell: (e) => metric("top_entry.ttl", e.ttl, "seconds") },
  ];
  return [table(columns, rows), counted(count, "entries, most hits first")];
}

// Tenants named in the answers, for the tenant selector's suggestions.
export function tenantsIn(...bodies) {
  const found = new Set();
  for (const body of bodies) {
    for (const row of [...(body?.near_misses ?? []), ...(body?.entries ?? [])]) {
      if (row.tenant) found.add(row.tenant);
    }
  }
  return [...found].sort();
}
