// One model: its versions (digest, size, signature, metadata, interface, gate results, state),
// a version's details, and the difference between two versions.

import { html, useState } from "../vendor/htm-preact.module.js";
import { api, apiOptional, seg } from "./api.js";
import { diffInterfaces, diffManifests } from "./diff.js";
import { bytes, shortDigest, time } from "./format.js";
import { StartRollout } from "./start.js";
import { Badge, ConfirmButton, Empty, ErrorBox, KeyValues, Loading, usePoll } from "./ui.js";

async function loadModel(name) {
  const base = `/v1/models/${seg(name)}`;
  const [model, versions, aliases, rollouts] = await Promise.all([
    api(base),
    api(`${base}/versions?order=desc&limit=100`),
    api(`${base}/aliases`).catch(() => []),
    api("/v1/rollouts").catch(() => []),
  ]);
  const signatures = await Promise.all(
    versions.map((v) => apiOptional(`${base}/versions/${v.version}/signature`).catch(() => null)),
  );
  const ours = rollouts.filter((r) => r.model === name);
  return {
    model,
    aliases,
    rollouts: ours,
    versions: versions
      .map((v, i) => ({ ...v, signing: signatures[i], rollouts: ours.filter((r) => r.version === v.version) }))
      .sort((a, b) => b.version - a.version),
  };
}

function signer(signing) {
  if (!signing) return null;
  const id = signing.identity || {};
  if (id.oidc_identity) return id.oidc_identity;
  if (id.cert_san && id.cert_san.length) return id.cert_san.join(", ");
  if (id.key_id) return `key ${id.key_id.slice(0, 16)}…`;
  if (id.cert_fingerprint) return `certificate ${id.cert_fingerprint.slice(0, 16)}…`;
  return "";
}

function Signature({ signing }) {
  if (!signing) return html`<${Badge} value="unsigned" />`;
  return html`<span><${Badge} value="verified" /> <span class="muted">${signing.method}: ${signer(signing)}</span></span>`;
}

function GateResult({ rollouts }) {
  const last = rollouts[0];
  if (!last) return html`<span class="muted">never rolled out</span>`;
  return html`<a href="#/rollouts/${last.id}" title=${last.reason}>#${last.id} <${Badge} value=${last.state} /></a>`;
}

function Metrics({ metadata }) {
  const metrics = Object.entries(metadata.metrics || {});
  if (!metrics.length) return html`<span class="muted">–</span>`;
  return html`<span>${metrics.map(([k, v]) => html`<span class="chip">${k} ${+Number(v).toFixed(4)}</span> `)}</span>`;
}

function Tensors({ title, tensors }) {
  return html`
    <table class="grid compact">
      <caption>${title}</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Dims</th></tr></thead>
      <tbody>${tensors.map((t) => html`<tr><td><code>${t.name}</code></td><td>${t.data_type}</td><td>[${t.dims.join(", ")}]</td></tr>`)}</tbody>
    </table>
  `;
}

function VersionDetail({ name, version, user, onChanged }) {
  const base = `/v1/models/${seg(name)}/versions/${version.version}`;
  const { data, error } = usePoll(
    () => Promise.all([api(base), apiOptional(`${base}/golden`).catch(() => null)]),
    [base],
  );
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (!data) return html`<${Loading} />`;
  const [detail, golden] = data;
  const labels = Object.entries(detail.metadata.labels || {});
  return html`
    <section class="detail" aria-label=${`Version ${version.version}`} data-testid="version-detail">
      <h2>Version ${version.version}</h2>
      <${KeyValues}
        rows=${[
          ["Digest", html`<code class="wrap">${detail.digest}</code>`],
          ["Size", bytes(detail.size_bytes)],
          ["State", html`<${Badge} value=${detail.state} />`],
          ["Pushed", time(detail.created_at)],
          ["Signature", html`<${Signature} signing=${version.signing} />`],
          ["API version", detail.metadata.api_version || "–"],
          ["Metrics", html`<${Metrics} metadata=${detail.metadata} />`],
          labels.length && ["Labels", html`${labels.map(([k, v]) => html`<span class="chip">${k}=${v}</span> `)}`],
          ["Golden set", golden ? `${golden.rows} rows (${golden.format}, ${golden.signed ? "signed" : "unsigned"})` : "none"],
          detail.last_error && ["Last error", detail.last_error],
          detail.compatibility && [
            `Against v${detail.compatibility.serving_version}`,
            detail.compatibility.compatible
              ? html`<${Badge} value="ok" /> compatible`
              : html`<span><${Badge} value="failed" /> breaking: ${detail.compatibility.differences.filter((d) => d.breaking).map((d) => d.detail).join("; ")}</span>`,
          ],
        ]}
      />
      <h3>Interface <span class="muted">(${detail.signature.backend}, max batch ${detail.signature.max_batch_size})</span></h3>
      <div class="two">
        <${Tensors} title="Inputs" tensors=${detail.signature.inputs} />
        <${Tensors} title="Outputs" tensors=${detail.signature.outputs} />
      </div>
      <h3>Gate results</h3>
      ${version.rollouts.length
        ? html`<ul class="plain">${version.rollouts.map(
            (r) => html`<li><a href="#/rollouts/${r.id}">Rollout #${r.id}</a> ${r.strategy} <${Badge} value=${r.state} /> <span class="muted">${r.reason}</span></li>`,
          )}</ul>`
        : html`<${Empty}>Not rolled out yet.<//>`}
      <h3>Files</h3>
      <table class="grid compact">
        <thead><tr><th scope="col">Path</th><th scope="col">Size</th><th scope="col">SHA-256</th></tr></thead>
        <tbody>${detail.manifest.map((f) => html`<tr><td><code>${f.path}</code></td><td>${bytes(f.size)}</td><td><code>${f.sha256.slice(0, 16)}…</code></td></tr>`)}</tbody>
      </table>
      ${user.can("deploy") && html`<${StartRollout} model=${name} version=${version.version} onStarted=${(r) => { location.hash = `#/rollouts/${r.id}`; onChanged?.(); }} />`}
    </section>
  `;
}

function Compare({ name, versions }) {
  const numbers = versions.map((v) => v.version);
  const [left, setLeft] = useState(numbers[1] ?? numbers[0]);
  const [right, setRight] = useState(numbers[0]);
  const base = `/v1/models/${seg(name)}/versions`;
  const { data, error } = usePoll(() => Promise.all([api(`${base}/${left}`), api(`${base}/${right}`)]), [left, right]);
  const select = (id, value, set) => html`
    <select id=${id} value=${value} onChange=${(e) => set(Number(e.currentTarget.value))}>
      ${numbers.map((n) => html`<option value=${n}>v${n}</option>`)}
    </select>`;
  let body = html`<${Loading} />`;
  if (error) body = html`<${ErrorBox} error=${error} />`;
  else if (data) {
    const files = diffManifests(data[0].manifest, data[1].manifest);
    const tensors = diffInterfaces(data[0].signature, data[1].signature);
    body = html`
      <h3>Files</h3>
      ${files.length
        ? html`<table class="grid compact" data-testid="manifest-diff">
            <thead><tr><th scope="col">Path</th><th scope="col">Change</th><th scope="col">v${left}</th><th scope="col">v${right}</th></tr></thead>
            <tbody>${files.map((f) => html`<tr class="diff-${f.change}"><td><code>${f.path}</code></td><td>${f.change}</td><td>${f.before}</td><td>${f.after}</td></tr>`)}</tbody>
          </table>`
        : html`<${Empty}>Same files, same contents.<//>`}
      <h3>Interface</h3>
      ${tensors.length
        ? html`<ul class="plain" data-testid="interface-diff">${tensors.map((t) => html`<li class="diff-${t.change}">${t.text}</li>`)}</ul>`
        : html`<${Empty}>Same interface.<//>`}
    `;
  }
  return html`
    <section class="detail" aria-label="Compare versions" data-testid="compare">
      <h2>Compare</h2>
      <div class="row">
        <label for="cmp-left">From</label>${select("cmp-left", left, setLeft)}
        <label for="cmp-right">to</label>${select("cmp-right", right, setRight)}
      </div>
      ${body}
    </section>
  `;
}

export function ModelPage({ name, user }) {
  const { data, error, loading, reload } = usePoll(() => loadModel(name), [name], 5000);
  const [selected, setSelected] = useState(null);
  if (error && !data) return html`<section><h1>${name}</h1><${ErrorBox} error=${error} /></section>`;
  if (loading && !data) return html`<section><h1>${name}</h1><${Loading} /></section>`;
  const { versions, aliases, model } = data;
  const production = aliases.find((a) => a.alias === "production");
  const chosen = versions.find((v) => v.version === selected) || null;
  return html`
    <section>
      <p class="crumbs"><a href="#/models">Models</a> /</p>
      <h1>${name}</h1>
      <${ErrorBox} error=${error} />
      <p>
        Production: <strong data-testid="production">${production ? `v${production.version}` : "none"}</strong>
        ${aliases.filter((a) => a.alias !== "production").map((a) => html` <span class="chip">${a.alias} → v${a.version}</span>`)}
        ${model.deployments.map((d) => html` <span class="chip pool-${d.pool}">${d.pool}: v${d.version}</span>`)}
      </p>
      ${user.can("deploy") &&
      production &&
      html`<p><${ConfirmButton}
        label="Roll back"
        danger
        testid="rollback"
        question=${`Roll ${name} back to the version that served before v${production.version}? Traffic moves at once.`}
        action=${() => api(`/v1/models/${seg(name)}/rollback`, { method: "POST" })}
        onDone=${(r) => { location.hash = `#/rollouts/${r.id}`; reload(); }}
      /></p>`}
      <table class="grid" data-testid="versions">
        <caption class="sr-only">Versions of ${name}</caption>
        <thead>
          <tr><th scope="col">Version</th><th scope="col">Digest</th><th scope="col">Size</th><th scope="col">Signature</th><th scope="col">Metrics</th><th scope="col">API</th><th scope="col">Gates</th><th scope="col">State</th></tr>
        </thead>
        <tbody>
          ${versions.map(
            (v) => html`
              <tr data-testid="version-row" data-version=${v.version} aria-selected=${v.version === selected}>
                <th scope="row"><button type="button" class="link" onClick=${() => setSelected(v.version === selected ? null : v.version)} aria-expanded=${v.version === selected} data-testid="version-open">v${v.version}</button></th>
                <td><code title=${v.digest}>${shortDigest(v.digest)}</code></td>
                <td>${bytes(v.size_bytes)}</td>
                <td><${Signature} signing=${v.signing} /></td>
                <td><${Metrics} metadata=${v.metadata} /></td>
                <td>${v.metadata.api_version || "–"}</td>
                <td><${GateResult} rollouts=${v.rollouts} /></td>
                <td><${Badge} value=${v.state} /></td>
              </tr>
            `,
          )}
        </tbody>
      </table>
      ${chosen && html`<${VersionDetail} name=${name} version=${chosen} user=${user} onChanged=${reload} />`}
      ${versions.length > 1 && html`<${Compare} name=${name} versions=${versions} />`}
    </section>
  `;
}
