// How numbers are written, and the elements that carry them. Every number on the page is a
// <span data-metric="name" data-value="raw JSON value">formatted</span>, so a test (or a
// scraper) reads the exact value without parsing the formatting. Text only, never innerHTML:
// prompts are user input.

export const formats = {
  count: (v) => v.toLocaleString("en-US"),
  percent: (v) => `${(v * 100).toFixed(1)}%`,
  // Three significant digits: a miss costs thousandths of a cent.
  usd: (v) => {
    if (v === 0) return "$0";
    const digits = Math.min(12, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(v)))));
    return `$${v.toFixed(digits)}`;
  },
  ms: (v) => `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ms`,
  score: (v) => v.toFixed(3),
  seconds: (v) => `${v.toLocaleString("en-US")} s`,
};

// A number (or null, shown as a dash) as its data-metric span.
export function metric(name, value, format) {
  const span = document.createElement("span");
  span.dataset.metric = name;
  span.dataset.value = value === null || value === undefined ? "" : String(value);
  span.textContent = value === null || value === undefined ? "–" : formats[format](value);
  return span;
}

// A labelled number in a card.
export function card(label, name, value, format) {
  const box = document.createElement("div");
  box.className = "card";
  const title = document.createElement("div");
  title.className = "label";
  title.textContent = label;
  const number = metric(name, value, format);
  number.classList.add("value");
  box.append(title, number);
  return box;
}

// A table: columns [{title, cell(row) -> Node|string}], one <tr data-row=i> per row.
export function table(columns, rows) {
  const element = document.createElement("table");
  const head = element.createTHead().insertRow();
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column.title;
    head.append(th);
  }
  const body = element.createTBody();
  rows.forEach((row, i) => {
    const tr = body.insertRow();
    tr.dataset.row = String(i);
    for (const column of columns) {
      const td = tr.insertCell();
      const content = column.cell(row);
      if (content instanceof Node) td.append(content);
      else td.textContent = content ?? "";
    }
  });
  return element;
}

// A prompt: shortened on screen, whole in the tooltip and in data-text.
export function prompt(name, text) {
  const span = document.createElement("span");
  span.className = "prompt";
  span.dataset.metric = name;
  span.dataset.text = text ?? "";
  span.title = text ?? "";
  span.textContent = text && text.length > 140 ? `${text.slice(0, 139)}…` : (text ?? "");
  return span;
}

// A timestamp in UTC, to the minute.
export function when(iso) {
  const span = document.createElement("time");
  span.dateTime = iso;
  span.textContent = iso.replace("T", " ").slice(0, 16);
  return span;
}

export function note(text, state) {
  const p = document.createElement("p");
  p.className = `note ${state}`;
  p.textContent = text;
  return p;
}
