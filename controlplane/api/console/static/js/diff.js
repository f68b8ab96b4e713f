// What changed between two versions: files of their manifests, tensors of their interfaces.

import { bytes } from "./format.js";

/** Files added, removed or changed (by digest) from manifest `a` to manifest `b`, by path. */
export function diffManifests(a, b) {
  const before = new Map(a.map((f) => [f.path, f]));
  const after = new Map(b.map((f) => [f.path, f]));
  const paths = [...new Set([...before.keys(), ...after.keys()])].sort();
  const rows = [];
  for (const path of paths) {
    const x = before.get(path);
    const y = after.get(path);
    const describe = (f) => (f ? `${bytes(f.size)} · ${f.sha256.slice(0, 10)}` : "–");
    if (!x) rows.push({ path, change: "added", before: "–", after: describe(y) });
    else if (!y) rows.push({ path, change: "removed", before: describe(x), after: "–" });
    else if (x.sha256 !== y.sha256) rows.push({ path, change: "changed", before: describe(x), after: describe(y) });
  }
  return rows;
}

function tensorText(t) {
  return `${t.name} ${t.data_type} [${t.dims.join(", ")}]`;
}

function diffTensors(kind, a, b) {
  const before = new Map(a.map((t) => [t.name, t]));
  const after = new Map(b.map((t) => [t.name, t]));
  const out = [];
  for (const [name, t] of before) {
    const u = after.get(name);
    if (!u) out.push({ change: "removed", text: `${kind} removed: ${tensorText(t)}` });
    else if (t.data_type !== u.data_type || t.dims.join() !== u.dims.join())
      out.push({ change: "changed", text: `${kind} changed: ${tensorText(t)} → ${tensorText(u)}` });
  }
  for (const [name, u] of after) {
    if (!before.has(name)) out.push({ change: "added", text: `${kind} added: ${tensorText(u)}` });
  }
  return out;
}

/** Differences between two interfaces (backend, max batch size, inputs, outputs) as sentences. */
export function diffInterfaces(a, b) {
  const out = [];
  if (a.backend !== b.backend) out.push({ change: "changed", text: `backend ${a.backend} → ${b.backend}` });
  if (a.max_batch_size !== b.max_batch_size)
    out.push({ change: "changed", text: `max batch size ${a.max_batch_size} → ${b.max_batch_size}` });
  return [...out, ...diffTensors("input", a.inputs, b.inputs), ...diffTensors("output", a.outputs, b.outputs)];
}
