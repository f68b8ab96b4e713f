// All rollouts, newest first, and the form that starts one.

import { html } from "../vendor/htm-preact.module.js";
import { api } from "./api.js";
import { ago } from "./format.js";
import { StartRollout } from "./start.js";
import { Badge, Empty, ErrorBox, Loading, usePoll } from "./ui.js";

export function RolloutsPage({ user }) {
  const { data, error, loading } = usePoll(() => api("/v1/rollouts"), [], 3000);
  const rollouts = data ? [...data].sort((a, b) => b.id - a.id) : [];
  return html`
    <section>
      <h1>Rollouts</h1>
      <${ErrorBox} error=${error} />
      ${loading && !data && html`<${Loading} />`}
      ${data && !rollouts.length && html`<${Empty}>No rollout yet.<//>`}
      ${rollouts.length > 0 &&
      html`
        <table class="grid" data-testid="rollouts">
          <caption class="sr-only">Rollouts, newest first</caption>
          <thead>
            <tr><th scope="col">#</th><th scope="col">Model</th><th scope="col">Version</th><th scope="col">Strategy</th><th scope="col">State</th><th scope="col">Traffic</th><th scope="col">By</th><th scope="col">Started</th><th scope="col">Reason</th></tr>
          </thead>
          <tbody>
            ${rollouts.map(
              (r) => html`
                <tr data-testid="rollout-row" data-rollout=${r.id}>
                  <th scope="row"><a href="#/rollouts/${r.id}">#${r.id}</a></th>
                  <td><a href="#/models/${encodeURIComponent(r.model)}">${r.model}</a></td>
                  <td>v${r.from_version ?? "–"} → v${r.version}</td>
                  <td>${r.strategy}</td>
                  <td><${Badge} value=${r.state} /></td>
                  <td>${r.active ? `${r.target_percent} % on ${r.target_pool}` : "–"}</td>
                  <td>${r.actor}</td>
                  <td title=${r.created_at}>${ago(r.created_at)}</td>
                  <td class="reason">${r.reason}</td>
                </tr>
              `,
            )}
          </tbody>
        </table>
      `}
      ${user.can("deploy") && html`<${StartRollout} editableTarget onStarted=${(r) => (location.hash = `#/rollouts/${r.id}`)} />`}
    </section>
  `;
}
