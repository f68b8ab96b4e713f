// The form that starts a rollout (deployer and admin roles only; the API checks again).

import { html, useState } from "../vendor/htm-preact.module.js";
import { api } from "./api.js";
import { ConfirmButton } from "./ui.js";

const DEFAULT_STEPS = { canary: "10, 50, 100", bluegreen: "100", inplace: "100" };

function parseSteps(text) {
  const steps = text.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!steps.length || steps.some((s) => !Number.isInteger(s) || s < 0 || s > 100)) {
    throw new Error("steps must be whole percentages between 0 and 100, for example 10, 50, 100");
  }
  return steps;
}

function numberOrNull(text) {
  const value = String(text).trim();
  if (value === "") return null;
  const number = Number(value);
  if (!Number.isFinite(number)) throw new Error(`${value} is not a number`);
  return number;
}

/** Build the POST /v1/rollouts body from the form's fields (throws on a field that is not valid). */
export function rolloutRequest(form) {
  const version = /^\d+$/.test(form.version.trim()) ? Number(form.version.trim()) : form.version.trim();
  if (!form.model.trim() || version === "") throw new Error("model and version are needed");
  const gates = { min_requests: numberOrNull(form.minRequests) ?? 20 };
  const errorRate = numberOrNull(form.maxErrorPercent);
  if (errorRate !== null) gates.max_error_rate = errorRate / 100;
  const p99 = numberOrNull(form.maxP99Ms);
  if (p99 !== null) gates.max_p99_ms = p99;
  return {
    model: form.model.trim(),
    version,
    strategy: form.strategy,
    steps: parseSteps(form.steps),
    step_seconds: numberOrNull(form.stepSeconds) ?? 30,
    bake_seconds: numberOrNull(form.bakeSeconds) ?? 60,
    gates,
  };
}

export function StartRollout({ model = "", version = "", onStarted, editableTarget = false }) {
  const [form, setForm] = useState({
    model,
    version: String(version),
    strategy: "canary",
    steps: DEFAULT_STEPS.canary,
    stepSeconds: "30",
    bakeSeconds: "60",
    maxErrorPercent: "1",
    maxP99Ms: "",
    minRequests: "20",
  });
  const field = (key) => (e) => {
    const value = e.currentTarget.value;
    setForm((f) => (key === "strategy" ? { ...f, strategy: value, steps: DEFAULT_STEPS[value] } : { ...f, [key]: value }));
  };
  const input = (key, label, attrs = {}) => html`
    <div class="field">
      <label for="start-${key}">${label}</label>
      <input id="start-${key}" value=${form[key]} onInput=${field(key)} data-testid="start-${key}" ...${attrs} />
    </div>`;
  return html`
    <form class="start" onSubmit=${(e) => e.preventDefault()} aria-label="Start a rollout" data-testid="start-form">
      <h3>Start a rollout</h3>
      <div class="fields">
        ${editableTarget && input("model", "Model", { required: true, autocomplete: "off" })}
        ${editableTarget && input("version", "Version or alias", { required: true, autocomplete: "off" })}
        <div class="field">
          <label for="start-strategy">Strategy</label>
          <select id="start-strategy" value=${form.strategy} onChange=${field("strategy")} data-testid="start-strategy">
            <option value="canary">canary</option>
            <option value="bluegreen">blue-green</option>
            <option value="inplace">in place (deploy)</option>
          </select>
        </div>
        ${input("steps", "Steps (% of traffic)")}
        ${input("stepSeconds", "Seconds per step", { inputmode: "decimal" })}
        ${input("bakeSeconds", "Bake seconds", { inputmode: "decimal" })}
        ${input("maxErrorPercent", "Max error rate (%)", { inputmode: "decimal" })}
        ${input("maxP99Ms", "Max p99 (ms)", { inputmode: "decimal", placeholder: "no limit" })}
        ${input("minRequests", "Min requests per step", { inputmode: "numeric" })}
      </div>
      <${ConfirmButton}
        label="Start rollout"
        testid="start"
        question=${`Start a ${form.strategy} rollout of ${form.model || "?"} ${/^\d+$/.test(form.version) ? "v" : "@"}${form.version || "?"} with steps ${form.steps}?`}
        action=${() => api("/v1/rollouts", { method: "POST", body: rolloutRequest(form) })}
        onDone=${onStarted}
      />
    </form>
  `;
}
