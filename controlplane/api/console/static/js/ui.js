// Pieces every page uses: polling, error and state display, the confirmation dialog.

import { html, useCallback, useEffect, useRef, useState } from "../vendor/htm-preact.module.js";
import { ApiError } from "./api.js";

/**
 * Load `fetcher()` now and every `intervalMs` (0: once); returns {data, error, loading, reload}.
 * Polling pauses while the tab is hidden and a failed poll keeps the last data on screen.
 */
export function usePoll(fetcher, deps, intervalMs = 0) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const alive = useRef(true);
  const load = useCallback(async () => {
    try {
      const data = await fetcher();
      if (alive.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (alive.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => {
    alive.current = true;
    setState((s) => ({ ...s, loading: true }));
    load();
    let timer = null;
    if (intervalMs > 0) {
      timer = setInterval(() => {
        if (!document.hidden) load();
      }, intervalMs);
    }
    return () => {
      alive.current = false;
      if (timer) clearInterval(timer);
    };
  }, [load, intervalMs]);
  return { ...state, reload: load };
}

export function ErrorBox({ error }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : "error";
  return html`<div class="error" role="alert" data-testid="error"><strong>${code}</strong>: ${error.message}</div>`;
}

export function Loading({ what = "Loading" }) {
  return html`<p class="muted" aria-live="polite">${what}…</p>`;
}

const STATE_CLASSES = {
  succeeded: "ok",
  passed: "ok",
  holding: "warn",
  ready: "ok",
  serving: "ok",
  deployed: "ok",
  verified: "ok",
  ok: "ok",
  success: "ok",
  failed: "bad",
  rolled_back: "bad",
  rejected: "bad",
  expired: "bad",
  aborted: "warn",
  rolling_back: "warn",
  down: "bad",
  unavailable: "bad",
  error: "bad",
  refused: "bad",
  pending_approval: "warn",
  unsigned: "warn",
};

/** A state word in a colored badge (color never the only cue: the word is always there). */
export function Badge({ value, testid }) {
  const word = String(value ?? "–");
  const kind = STATE_CLASSES[word] || (/ing$/.test(word) ? "live" : "neutral");
  return html`<span class="badge ${kind}" data-testid=${testid}>${word.replaceAll("_", " ")}</span>`;
}

/**
 * A button that asks first: opens a modal <dialog> with `question`, runs `action` on confirm and
 * shows its error in the dialog. Keyboard: Escape cancels, focus starts on Cancel.
 */
export function ConfirmButton({ label, question, action, danger = false, testid, onDone, children }) {
  const dialog = useRef(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const open = () => {
    setError(null);
    dialog.current?.showModal();
  };
  const confirm = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const result = await action();
      dialog.current?.close();
      onDone?.(result);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return html`
    <button type="button" class=${danger ? "danger" : "primary"} onClick=${open} data-testid=${testid}>${label}</button>
    <dialog ref=${dialog} class="confirm" aria-label=${label} data-testid=${testid && `${testid}-dialog`}>
      <form method="dialog" onSubmit=${confirm}>
        <p>${question}</p>
        ${children}
        <${ErrorBox} error=${error} />
        <div class="actions">
          <button type="button" autofocus onClick=${() => dialog.current?.close()}>Cancel</button>
          <button type="submit" class=${danger ? "danger" : "primary"} disabled=${busy} data-testid=${testid && `${testid}-confirm`}>
            ${busy ? "Working…" : label}
          </button>
        </div>
      </form>
    </dialog>
  `;
}

export function KeyValues({ rows }) {
  return html`
    <dl class="kv">
      ${rows.filter(Boolean).map(([key, value]) => html`<div><dt>${key}</dt><dd>${value}</dd></div>`)}
    </dl>
  `;
}

export function Empty({ children }) {
  return html`<p class="muted empty">${children}</p>`;
}
