// The audit log, newest first, filtered by model, actor and action; new events arrive live.

import { html, useEffect, useState } from "../vendor/htm-preact.module.js";
import { api, followEvents, query } from "./api.js";
import { json, time } from "./format.js";
import { Badge, Empty, ErrorBox, Loading } from "./ui.js";

const PAGE = 50;

/** Whether `event` passes the filters, as the API's own filters decide (for events that arrive live). */
export function matches(event, { model, actor, action }) {
  if (actor && event.actor !== actor) return false;
  if (action) {
    if (action.endsWith(".*") ? !event.action.startsWith(action.slice(0, -1)) : event.action !== action) return false;
  }
  if (model) {
    const t = event.target;
    if (!(t === model || t.startsWith(`${model}/`) || t.startsWith(`${model}@`) || t.endsWith(`/${model}`))) return false;
  }
  return true;
}

function Filters({ initial, onApply }) {
  const [form, setForm] = useState(initial);
  const set = (key) => (e) => setForm({ ...form, [key]: e.currentTarget.value });
  return html`
    <form class="filters" onSubmit=${(e) => { e.preventDefault(); onApply({ model: form.model.trim(), actor: form.actor.trim(), action: form.action.trim() }); }} aria-label="Filter the audit log" data-testid="audit-filters">
      <div class="field"><label for="f-model">Model</label><input id="f-model" value=${form.model} onInput=${set("model")} data-testid="filter-model" /></div>
      <div class="field"><label for="f-actor">Actor</label><input id="f-actor" value=${form.actor} onInput=${set("actor")} data-testid="filter-actor" /></div>
      <div class="field"><label for="f-action">Action</label><input id="f-action" value=${form.action} onInput=${set("action")} placeholder="rollout.*" data-testid="filter-action" /></div>
      <button type="submit" class="primary" data-testid="filter-apply">Filter</button>
      <button type="button" onClick=${() => { const empty = { model: "", actor: "", action: "" }; setForm(empty); onApply(empty); }}>Clear</button>
    </form>
  `;
}

export function AuditPage() {
  const [filters, setFilters] = useState({ model: "", actor: "", action: "" });
  const [events, setEvents] = useState(null);
  const [error, setError] = useState(null);
  const [more, setMore] = useState(false);

  useEffect(() => {
    let alive = true;
    let stop = () => {};
    setEvents(null);
    setError(null);
    api(`/v1/events${query({ ...filters, order: "desc", limit: PAGE })}`)
      .then((page) => {
        if (!alive) return;
        setEvents(page);
        setMore(page.length === PAGE);
        const newest = page.length ? page[0].id : undefined;
        stop = followEvents(
          (event) => {
            if (matches(event, filters)) setEvents((list) => (list && !list.some((e) => e.id === event.id) ? [event, ...list] : list));
          },
          { after: newest },
        );
      })
      .catch((failure) => alive && setError(failure));
    return () => {
      alive = false;
      stop();
    };
  }, [filters]);

  const older = async () => {
    try {
      const oldest = events[events.length - 1].id;
      const page = await api(`/v1/events${query({ ...filters, order: "desc", limit: PAGE, before: oldest })}`);
      setEvents([...events, ...page]);
      setMore(page.length === PAGE);
    } catch (failure) {
      setError(failure);
    }
  };

  return html`
    <section>
      <h1>Audit</h1>
      <${Filters} initial=${filters} onApply=${setFilters} />
      <${ErrorBox} error=${error} />
      ${!events && !error && html`<${Loading} />`}
      ${events && !events.length && html`<${Empty}>No event matches.<//>`}
      ${events &&
      events.length > 0 &&
      html`
        <table class="grid compact" data-testid="audit">
          <caption class="sr-only">Audit events, newest first</caption>
          <thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Outcome</th><th scope="col">Details</th></tr></thead>
          <tbody>
            ${events.map(
              (e) => html`
                <tr data-testid="audit-row" data-action=${e.action}>
                  <td>${e.id}</td>
                  <td>${time(e.at)}</td>
                  <td>${e.actor}</td>
                  <td><code>${e.action}</code></td>
                  <td>${e.target}</td>
                  <td><${Badge} value=${e.outcome} /></td>
                  <td>${Object.keys(e.details || {}).length ? html`<details><summary>${Object.keys(e.details).slice(0, 3).join(", ")}</summary><pre>${json(e.details)}</pre></details>` : ""}</td>
                </tr>
              `,
            )}
          </tbody>
        </table>
        ${more && html`<button type="button" onClick=${older} data-testid="audit-older">Older events</button>`}
      `}
    </section>
  `;
}
