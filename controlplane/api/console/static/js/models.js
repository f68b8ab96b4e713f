// Every model at a glance: production version, aliases, pools and health.

import { html } from "../vendor/htm-preact.module.js";
import { api, modelHealth, seg } from "./api.js";
import { ago } from "./format.js";
import { Badge, Empty, ErrorBox, Loading, usePoll } from "./ui.js";

async function loadModels() {
  const models = await api("/v1/models");
  return Promise.all(
    models.map(async (model) => {
      const [aliases, health] = await Promise.all([
        api(`/v1/models/${seg(model.name)}/aliases`).catch(() => []),
        modelHealth(model.name).catch((error) => ({ status: "unknown", reason: error.message })),
      ]);
      return { ...model, aliases, health };
    }),
  );
}

function Aliases({ aliases }) {
  const shown = aliases.filter((a) => a.alias !== "production");
  if (!shown.length) return html`<span class="muted">–</span>`;
  return html`<ul class="chips">${shown.map((a) => html`<li><span class="chip">${a.alias} → v${a.version}</span></li>`)}</ul>`;
}

function Pools({ deployments }) {
  if (!deployments.length) return html`<span class="muted">not deployed</span>`;
  return html`
    <ul class="chips">
      ${deployments.map((d) => html`<li><span class="chip pool-${d.pool}">${d.pool}: v${d.version}</span> <${Badge} value=${d.state} /></li>`)}
    </ul>
  `;
}

export function ModelsPage() {
  const { data, error, loading } = usePoll(loadModels, [], 5000);
  return html`
    <section>
      <h1>Models</h1>
      <${ErrorBox} error=${error} />
      ${loading && !data && html`<${Loading} />`}
      ${data && !data.length && html`<${Empty}>No model yet: push one with <code>controlplane push</code>.<//>`}
      ${data &&
      data.length > 0 &&
      html`
        <table class="grid" data-testid="models">
          <caption class="sr-only">Models, their production version, aliases, pools and health</caption>
          <thead>
            <tr><th scope="col">Model</th><th scope="col">Production</th><th scope="col">Aliases</th><th scope="col">Pools</th><th scope="col">Health</th><th scope="col">Latest</th></tr>
          </thead>
          <tbody>
            ${data.map((m) => {
              const production = m.aliases.find((a) => a.alias === "production");
              return html`
                <tr data-testid="model-row" data-model=${m.name}>
                  <th scope="row"><a href="#/models/${seg(m.name)}" data-testid="model-link">${m.name}</a></th>
                  <td data-testid="production">${production ? html`<strong>v${production.version}</strong> <span class="muted">${ago(production.updated_at)}</span>` : html`<span class="muted">none</span>`}</td>
                  <td><${Aliases} aliases=${m.aliases} /></td>
                  <td><${Pools} deployments=${m.deployments} /></td>
                  <td title=${m.health.reason || ""} data-testid="health"><${Badge} value=${m.health.status} /></td>
                  <td>v${m.latest_version}</td>
                </tr>
              `;
            })}
          </tbody>
        </table>
      `}
    </section>
  `;
}
