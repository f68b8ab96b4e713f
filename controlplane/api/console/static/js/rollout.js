// One rollout: its timeline (weights, error rate, p99 per step, gates drawn in), its events, and
// the buttons its state and the user's role allow.

import { html, useMemo, useState } from "../vendor/htm-preact.module.js";
import { api } from "./api.js";
import { Chart, colorFor } from "./chart.js";
import { clock, ms, percent, seconds, time } from "./format.js";
import { Badge, ConfirmButton, ErrorBox, KeyValues, Loading, usePoll } from "./ui.js";

const epoch = (at) => new Date(at).getTime() / 1000;

/**
 * The timeline's series from the rollout's events (pure: no DOM). An active rollout's weights
 * run on to `now` at the proxy's live weights, so the chart shows how long a step has lasted.
 */
export function timeline(rollout, now = Date.now() / 1000) {
  const events = rollout.events;
  const pools = [rollout.source_pool, rollout.target_pool].filter((p, i, all) => p && all.indexOf(p) === i);
  const weighted = events.filter((e) => e.weights && Object.keys(e.weights).length);
  if (rollout.active && rollout.live_weights && weighted.length) {
    weighted.push({ at: new Date(now * 1000).toISOString(), weights: rollout.live_weights });
  }
  const measured = events.filter((e) => e.measurements && typeof e.measurements.requests === "number");
  const start = events.length ? epoch(events[0].at) : now;
  const end = rollout.active ? now : events.length ? epoch(events[events.length - 1].at) : now;
  return {
    pools,
    span: [start, Math.max(end, start + 1)],
    weights: [weighted.map((e) => epoch(e.at)), ...pools.map((p) => weighted.map((e) => e.weights[p] ?? null))],
    errors: [measured.map((e) => epoch(e.at)), measured.map((e) => e.measurements.error_rate ?? null)],
    p99: [measured.map((e) => epoch(e.at)), measured.map((e) => e.measurements.p99_ms ?? null)],
  };
}

function gateSummary(gates) {
  const parts = [
    gates.max_error_rate != null ? `error rate ≤ ${percent(gates.max_error_rate)}` : "no error-rate limit",
    gates.max_p99_ms != null ? `p99 ≤ ${ms(gates.max_p99_ms)}` : "no p99 limit",
    `≥ ${gates.min_requests} requests per step`,
  ];
  if (gates.max_error_rate_increase != null) parts.push(`error rate ≤ baseline + ${percent(gates.max_error_rate_increase)}`);
  if (gates.max_p99_ratio != null) parts.push(`p99 ≤ ${gates.max_p99_ratio}× baseline`);
  if (gates.metric) parts.push(`${gates.metric} no worse than production`);
  parts.push(`on no data: ${gates.on_no_data}`);
  return parts.join(", ");
}

function Actions({ rollout, user, reload }) {
  const [reason, setReason] = useState("");
  const post = (what, body) => api(`/v1/rollouts/${rollout.id}/${what}`, { method: "POST", body });
  const pending = rollout.state === "pending_approval";
  const buttons = [];
  if (rollout.active && !pending && user.can("deploy")) {
    buttons.push(html`<${ConfirmButton} label="Promote" testid="promote" question=${`Skip the remaining steps and send all traffic to v${rollout.version}?`} action=${() => post("promote")} onDone=${reload} />`);
  }
  if (rollout.active && user.can("deploy")) {
    buttons.push(html`<${ConfirmButton} label="Abort" danger testid="abort" question=${`Abort rollout #${rollout.id}? Traffic goes back to v${rollout.from_version ?? "the previous version"}.`} action=${() => post("abort")} onDone=${reload} />`);
  }
  if (pending && user.can("approve")) {
    buttons.push(html`<${ConfirmButton} label="Approve" testid="approve" question=${`Approve the rollout of ${rollout.model} v${rollout.version} requested by ${rollout.actor}?`} action=${() => post("approve")} onDone=${reload} />`);
    buttons.push(html`
      <${ConfirmButton} label="Reject" danger testid="reject" question="Reject this rollout? Say why (kept in the audit log)." action=${() => post("reject", { reason })} onDone=${reload}>
        <label for="reject-reason">Reason</label>
        <input id="reject-reason" required maxlength="1000" value=${reason} onInput=${(e) => setReason(e.currentTarget.value)} />
      <//>`);
  }
  if (!buttons.length) return null;
  return html`<div class="actions" data-testid="actions">${buttons}</div>`;
}

function MeasurementCell({ m }) {
  if (!m || typeof m.requests !== "number") return html`<span class="muted">–</span>`;
  const verdict = m.passed === true ? "passed" : m.passed === false ? (m.holding ? "holding" : "failed") : "";
  return html`<span>${m.requests} req · ${percent(m.error_rate)} · p99 ${ms(m.p99_ms)} ${verdict && html`<${Badge} value=${verdict} />`}</span>
    ${m.breaches?.length ? html`<div class="breach">${m.breaches.join("; ")}</div>` : ""}`;
}

export function RolloutPage({ id, user }) {
  const { data: rollout, error, reload } = usePoll(() => api(`/v1/rollouts/${Number(id)}`), [id], 1500);
  const series = useMemo(() => (rollout ? timeline(rollout) : null), [rollout]);
  if (!rollout) {
    return html`<section><p class="crumbs"><a href="#/rollouts">Rollouts</a> /</p><h1>Rollout #${id}</h1>${error ? html`<${ErrorBox} error=${error} />` : html`<${Loading} />`}</section>`;
  }
  const gates = rollout.gates || {};
  const live = rollout.live_weights || {};
  return html`
    <section>
      <p class="crumbs"><a href="#/rollouts">Rollouts</a> /</p>
      <h1>Rollout #${rollout.id}: ${rollout.model} v${rollout.from_version ?? "–"} → v${rollout.version} <${Badge} value=${rollout.state} testid="rollout-state" /></h1>
      <${ErrorBox} error=${error} />
      <p class="reason" data-testid="rollout-reason">${rollout.reason}</p>
      <${Actions} rollout=${rollout} user=${user} reload=${reload} />
      <${KeyValues}
        rows=${[
          ["Strategy", `${rollout.strategy}, steps ${rollout.steps.join(" → ")} %`],
          ["Step", rollout.step_index === null ? "–" : `${rollout.step_index + 1} of ${rollout.steps.length} (${rollout.target_percent} % on ${rollout.target_pool})`],
          ["Live weights", html`<span data-testid="live-weights">${Object.entries(live).map(([p, w]) => html`<span class="chip pool-${p}" data-pool=${p} data-weight=${w}>${p} ${w}</span> `)}</span>`],
          ["Timing", `${seconds(rollout.step_seconds)} per step, bake ${seconds(rollout.bake_seconds)}`],
          ["Gates", gateSummary(gates)],
          ["Requested by", `${rollout.actor}, ${time(rollout.created_at)}`],
          rollout.approved_by && ["Approved by", `${rollout.approved_by}, ${time(rollout.decided_at)}`],
          rollout.finished_at && ["Finished", time(rollout.finished_at)],
        ]}
      />
      <div class="charts">
        <${Chart}
          title="Traffic weight per pool"
          testid="chart-weights"
          stepped
          series=${series.pools.map((p, i) => ({ label: p, color: colorFor(p, i) }))}
          data=${series.weights}
          span=${series.span}
          summary=${Object.entries(live).map(([p, w]) => `${p} ${w}`).join(", ")}
        />
        <${Chart}
          title="Candidate error rate per analysed step"
          testid="chart-errors"
          format="percent"
          stepped
          series=${[{ label: "error rate", color: "#bc4c00" }]}
          data=${series.errors}
          span=${series.span}
          thresholds=${gates.max_error_rate != null ? [{ value: gates.max_error_rate, label: `gate ${percent(gates.max_error_rate)}` }] : []}
        />
        <${Chart}
          title="Candidate p99 (ms) per analysed step"
          testid="chart-p99"
          stepped
          series=${[{ label: "p99 ms", color: "#8250df" }]}
          data=${series.p99}
          span=${series.span}
          thresholds=${gates.max_p99_ms != null ? [{ value: gates.max_p99_ms, label: `gate ${ms(gates.max_p99_ms)}` }] : []}
        />
      </div>
      <h2>Events</h2>
      <table class="grid compact" data-testid="rollout-events">
        <thead><tr><th scope="col">Time</th><th scope="col">State</th><th scope="col">Step</th><th scope="col">Weights</th><th scope="col">Measured</th><th scope="col">Reason</th></tr></thead>
        <tbody>
          ${rollout.events.map(
            (e) => html`
              <tr>
                <td title=${e.at}>${clock(e.at)}</td>
                <td>${e.from_state ? `${e.from_state} → ` : ""}<${Badge} value=${e.to_state} /></td>
                <td>${e.step_index === null ? "–" : e.step_index + 1}</td>
                <td>${Object.entries(e.weights || {}).map(([p, w]) => `${p} ${w}`).join(", ") || "–"}</td>
                <td><${MeasurementCell} m=${e.measurements} /></td>
                <td class="reason">${e.reason}</td>
              </tr>
            `,
          )}
        </tbody>
      </table>
    </section>
  `;
}
