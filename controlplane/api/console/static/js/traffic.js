// Live traffic: each pool's weight, request rate, error rate and p99, with the version it serves.

import { html, useEffect, useMemo, useRef, useState } from "../vendor/htm-preact.module.js";
import { api, query } from "./api.js";
import { Chart, colorFor } from "./chart.js";
import { ms, percent, rate, release } from "./format.js";
import { Badge, ErrorBox, Loading } from "./ui.js";

const POLL_MS = 2000;
const KEEP_SECONDS = 10 * 60;

/**
 * Points of several pools (each sampled at nearly the same moment) as uPlot columns:
 * one row per sampling round, one column per pool; a pool missing from a round is null.
 */
export function columns(points, pools, field) {
  const rows = [];
  let row = null;
  for (const p of [...points].sort((a, b) => a.at - b.at)) {
    if (!row || p.pool in row.values) {
      row = { at: p.at, values: {} };
      rows.push(row);
    }
    row.values[p.pool] = p[field];
  }
  return [rows.map((r) => r.at), ...pools.map((pool) => rows.map((r) => r.values[pool] ?? null))];
}

function useTraffic() {
  const [state, setState] = useState({ pools: null, points: [], error: null });
  const since = useRef(null);
  useEffect(() => {
    let alive = true;
    const load = async () => {
      if (document.hidden) return;
      try {
        const answer = await api(`/v1/traffic${query({ since: since.current })}`);
        if (!alive) return;
        if (answer.points.length) since.current = answer.points[answer.points.length - 1].at;
        setState((s) => {
          const cutoff = answer.now - KEEP_SECONDS;
          const points = [...s.points, ...answer.points].filter((p) => p.at >= cutoff);
          return { pools: answer.pools, points, error: null };
        });
      } catch (error) {
        if (alive) setState((s) => ({ ...s, error }));
      }
    };
    load();
    const timer = setInterval(load, POLL_MS);
    return () => {
      alive = false;
      clearInterval(timer);
    };
  }, []);
  return state;
}

function latest(points, pool) {
  for (let i = points.length - 1; i >= 0; i -= 1) if (points[i].pool === pool) return points[i];
  return null;
}

export function TrafficPage() {
  const { pools, points, error } = useTraffic();
  const names = useMemo(() => (pools || []).map((p) => p.name), [pools]);
  const series = names.map((name, i) => {
    const pool = pools.find((p) => p.name === name);
    return { label: `${name} (${release(pool.release)})`, color: colorFor(name, i) };
  });
  const data = useMemo(
    () => ({
      rps: columns(points, names, "requests_per_second"),
      errors: columns(points, names, "error_rate"),
      p99: columns(points, names, "p99_ms"),
      weight: columns(points, names, "weight"),
    }),
    [points, names],
  );
  if (!pools) return html`<section><h1>Traffic</h1><${ErrorBox} error=${error} />${!error && html`<${Loading} />`}</section>`;
  return html`
    <section>
      <h1>Traffic</h1>
      <${ErrorBox} error=${error} />
      <table class="grid" data-testid="pools">
        <caption class="sr-only">Pools now</caption>
        <thead><tr><th scope="col">Pool</th><th scope="col">Weight</th><th scope="col">Serves</th><th scope="col">Health checks</th><th scope="col">Requests</th><th scope="col">Errors</th><th scope="col">p99</th></tr></thead>
        <tbody>
          ${pools.map((pool) => {
            const last = latest(points, pool.name);
            return html`
              <tr data-testid="pool-row" data-pool=${pool.name}>
                <th scope="row"><span class="swatch" style=${{ background: colorFor(pool.name) }}></span>${pool.name}</th>
                <td data-testid="pool-weight">${pool.weight}</td>
                <td>${release(pool.release)}</td>
                <td>${pool.error ? html`<${Badge} value="error" /> <span class="muted">${pool.error}</span>` : html`<${Badge} value=${pool.up ? "ok" : "down"} />`}</td>
                <td data-testid="pool-rps" data-value=${last?.requests_per_second ?? ""}>${rate(last?.requests_per_second)}</td>
                <td>${percent(last?.error_rate)}</td>
                <td>${ms(last?.p99_ms)}</td>
              </tr>
            `;
          })}
        </tbody>
      </table>
      <div class="charts">
        <${Chart} title="Requests per second" testid="chart-rps" series=${series} data=${data.rps} summary=${pools.map((p) => `${p.name} ${rate(latest(points, p.name)?.requests_per_second)}`).join(", ")} />
        <${Chart} title="Error rate" testid="chart-error-rate" format="percent" series=${series} data=${data.errors} />
        <${Chart} title="p99 latency (ms)" testid="chart-latency" series=${series} data=${data.p99} />
        <${Chart} title="Weight" testid="chart-weight" stepped series=${series} data=${data.weight} />
      </div>
      <p class="muted">Sampled from HAProxy's and Triton's counters every ${POLL_MS / 1000} s while this page is open; the last ${KEEP_SECONDS / 60} minutes are kept.</p>
    </section>
  `;
}
