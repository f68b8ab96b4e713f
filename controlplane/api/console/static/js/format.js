// How values are written on the page: one place, so every page says a number the same way.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < UNITS.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? size : size.toFixed(1)} ${UNITS[unit]}`;
}

export function shortDigest(digest) {
  if (!digest) return "–";
  const hex = String(digest).replace(/^sha256:/, "");
  return `sha256:${hex.slice(0, 12)}`;
}

export function time(value) {
  if (!value) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleString(undefined, { hour12: false });
}

export function clock(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleTimeString(undefined, { hour12: false });
}

export function ago(value) {
  if (!value) return "–";
  const seconds = Math.max(0, (Date.now() - new Date(value).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function percent(fraction, digits = 2) {
  if (fraction === null || fraction === undefined) return "–";
  return `${(fraction * 100).toFixed(digits)} %`;
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(value < 10 ? 2 : 1)} ms`;
}

export function rate(value) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(value < 10 ? 1 : 0)} /s`;
}

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(value < 10 ? 1 : 0)} s`;
}

/** A release {model: version} as "mlp v2, other v1". */
export function release(value) {
  const entries = Object.entries(value || {});
  if (!entries.length) return "nothing";
  return entries.map(([model, version]) => `${model} v${version}`).join(", ");
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}
