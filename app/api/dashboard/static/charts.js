// Two small SVG charts (a line chart over time, grouped horizontal bars), no library.
// Colours come from CSS classes: the page's Content-Security-Policy forbids inline styles.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;

function svg(tag, attributes = {}, text = null) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== null) element.textContent = text;
  return element;
}

function legend(series) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const { name, cls } of series) {
    const item = document.createElement("li");
    item.className = cls;
    item.textContent = name;
    list.append(item);
  }
  return list;
}

// A top value for the y axis: the data's maximum rounded up to 1, 2 or 5 times a power of 10.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// series: [{name, cls, values: [number|null]}], one value per label; format(y) labels the axis.
export function lineChart({ title, labels, series, format, max = null }) {
  const height = 220;
  const pad = { left: 64, right: 12, top: 12, bottom: 28 };
  const plotW = WIDTH - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const values = series.flatMap((s) => s.values).filter((v) => v !== null);
  const top = max ?? niceMax(Math.max(0, ...values));
  const x = (i) => pad.left + (labels.length === 1 ? plotW / 2 : (i * plotW) / (labels.length - 1));
  const y = (v) => pad.top + plotH - (v / top) * plotH;

  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  root.append(svg("title", {}, title));
  for (let tick = 0; tick <= 4; tick += 1) {
    const value = (top * tick) / 4;
    root.append(
      svg("line", { x1: pad.left, x2: WIDTH - pad.right, y1: y(value), y2: y(value), class: "grid" }),
      svg("text", { x: pad.left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, format(value)),
    );
  }
  const last = labels.length - 1;
  for (const i of new Set([0, Math.floor(last / 2), last])) {
    // The end labels lean inwards so that they stay inside the chart.
    const anchor = last === 0 || (i !== 0 && i !== last) ? "middle" : i === 0 ? "start" : "end";
    root.append(svg("text", { x: x(i), y: height - 8, class: "axis", "text-anchor": anchor }, labels[i]));
  }
  for (const { name, cls, values: points } of series) {
    const path = points
      .map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`))
      .filter((p) => p !== null);
    root.append(svg("polyline", { points: path.join(" "), class: `line ${cls}` }));
    points.forEach((v, i) => {
      if (v === null) return;
      const dot = svg("circle", { cx: x(i), cy: y(v), r: 3, class: `dot ${cls}` });
      dot.append(svg("title", {}, `${labels[i]} ${name}: ${format(v)}`));
      root.append(dot);
    });
  }
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, root, legend(series));
  return figure;
}

// rows: [{label, values: [number|null]}]; series: [{name, cls}] names each value of a row.
export function barChart({ title, rows, series, format }) {
  const bar = 12;
  const gap = 10;
  const pad = { left: 110, right: 90, top: 8, bottom: 8 };
  const rowH = series.length * bar + gap;
  const height = pad.top + pad.bottom + rows.length * rowH;
  const plotW = WIDTH - pad.left - pad.right;
  const top = niceMax(Math.max(0, ...rows.flatMap((r) => r.values).filter((v) => v !== null)));

  const root = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  root.append(svg("title", {}, title));
  rows.forEach((row, r) => {
    const y0 = pad.top + r * rowH;
    root.append(
      svg("text", { x: pad.left - 8, y: y0 + (series.length * bar) / 2 + 4, class: "axis", "text-anchor": "end" }, row.label),
    );
    row.values.forEach((v, s) => {
      const w = v === null ? 0 : Math.max(1, (v / top) * plotW);
      const rect = svg("rect", { x: pad.left, y: y0 + s * bar, width: w, height: bar - 2, class: `bar ${series[s].cls}` });
      rect.append(svg("title", {}, `${row.label} ${series[s].name}: ${format(v)}`));
      root.append(rect);
      if (v !== null) root.append(svg("text", { x: pad.left + w + 4, y: y0 + s * bar + bar - 3, class: "axis" }, format(v)));
    });
  });
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, root, legend(series));
  return figure;
}
