// Sign in with an API token; the token is checked against the API before it is kept.

import { html, useState } from "../vendor/htm-preact.module.js";
import { api } from "./api.js";
import { ErrorBox } from "./ui.js";

export function LoginPage({ onLogin, notice }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (event) => {
    event.preventDefault();
    const value = token.trim();
    if (!value) return;
    setBusy(true);
    setError(null);
    try {
      const me = await api("/v1/whoami", { token: value });
      onLogin(me, value);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };

  return html`
    <main class="login" id="main">
      <h1>Triton Control Plane</h1>
      <form onSubmit=${submit} data-testid="login-form">
        <label for="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          spellcheck="false"
          required
          value=${token}
          onInput=${(e) => setToken(e.currentTarget.value)}
          aria-describedby="token-help"
          data-testid="token"
        />
        <p id="token-help" class="muted">
          A token from <code>controlplane token create</code>. It stays in this tab only and is forgotten when the tab closes.
        </p>
        ${notice && html`<p class="notice" role="status">${notice}</p>`}
        <${ErrorBox} error=${error} />
        <button type="submit" class="primary" disabled=${busy} data-testid="login">${busy ? "Checking…" : "Sign in"}</button>
      </form>
    </main>
  `;
}
