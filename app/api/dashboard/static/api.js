// The metrics calls, with the key the user gave (kept in this tab's sessionStorage only).

const KEY = "sentinel.dashboard.key";

export class NeedsKey extends Error {}
export class NotAvailable extends Error {}

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  forget: () => sessionStorage.removeItem(KEY),
};

// The error message of a Sentinel error body, else the status line.
async function reason(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}`;
}

// GET a same-origin JSON route with its non-empty params; NeedsKey on 401/403, NotAvailable on
// 404 (a route this Sentinel does not have yet), Error otherwise.
export async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const stored = key.get();
  if (stored) headers.Authorization = `Bearer ${stored}`;
  const response = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401 || response.status === 403) throw new NeedsKey(await reason(response));
  if (response.status === 404) throw new NotAvailable(await reason(response));
  if (!response.ok) throw new Error(await reason(response));
  return response.json();
}
