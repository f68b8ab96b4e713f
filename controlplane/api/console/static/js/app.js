// The console's shell: login, navigation between pages (hash routes) and who is signed in.

import { html, render, useEffect, useState } from "../vendor/htm-preact.module.js";
import { api, onUnauthorized, session } from "./api.js";
import { AuditPage } from "./audit.js";
import { LoginPage } from "./login.js";
import { ModelPage } from "./model.js";
import { ModelsPage } from "./models.js";
import { RolloutPage } from "./rollout.js";
import { RolloutsPage } from "./rollouts.js";
import { TrafficPage } from "./traffic.js";
import { Loading } from "./ui.js";

const PAGES = [
  { path: "models", label: "Models" },
  { path: "traffic", label: "Traffic" },
  { path: "rollouts", label: "Rollouts" },
  { path: "audit", label: "Audit" },
];

function currentRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "models", id: parts[1] };
}

function Page({ route, user }) {
  switch (route.page) {
    case "models":
      return route.id ? html`<${ModelPage} name=${route.id} user=${user} />` : html`<${ModelsPage} user=${user} />`;
    case "traffic":
      return html`<${TrafficPage} user=${user} />`;
    case "rollouts":
      return route.id ? html`<${RolloutPage} id=${route.id} user=${user} />` : html`<${RolloutsPage} user=${user} />`;
    case "audit":
      return html`<${AuditPage} user=${user} />`;
    default:
      return html`<section><h1>Not found</h1><p>No page <code>${route.page}</code>. <a href="#/models">Models</a></p></section>`;
  }
}

function Shell({ user, onLogout }) {
  const [route, setRoute] = useState(currentRoute());
  useEffect(() => {
    const changed = () => {
      setRoute(currentRoute());
      document.getElementById("main")?.focus();
    };
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header class="top">
      <span class="brand">Triton Control Plane</span>
      <nav aria-label="Console">
        <ul>
          ${PAGES.map(
            (p) => html`<li><a href="#/${p.path}" aria-current=${route.page === p.path ? "page" : undefined} data-testid="nav-${p.path}">${p.label}</a></li>`,
          )}
        </ul>
      </nav>
      <span class="who" data-testid="who">${user.name}${user.role ? html` · <span class="role">${user.role}</span>` : ""}</span>
      <button type="button" class="link" onClick=${onLogout} data-testid="logout">Sign out</button>
    </header>
    <main id="main" tabindex="-1">
      <${Page} route=${route} user=${user} />
    </main>
  `;
}

function withPermissions(me) {
  const permissions = new Set(me.permissions || []);
  return { ...me, can: (permission) => permissions.has(permission) };
}

function App() {
  const [user, setUser] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.token()));
  const [notice, setNotice] = useState(null);

  const logout = (message) => {
    session.clear();
    setUser(null);
    setNotice(message || null);
  };

  useEffect(() => {
    onUnauthorized((error) => logout(`Signed out: ${error.message}`));
    if (!session.token()) return;
    api("/v1/whoami")
      .then((me) => setUser(withPermissions(me)))
      .catch(() => session.clear())
      .finally(() => setChecking(false));
  }, []);

  if (checking) return html`<${Loading} what="Checking the saved token" />`;
  if (!user) {
    return html`<${LoginPage}
      notice=${notice}
      onLogin=${(me, token) => {
        session.save(token);
        setNotice(null);
        setUser(withPermissions(me));
      }}
    />`;
  }
  return html`<${Shell} user=${user} onLogout=${() => logout()} />`;
}

const root = document.getElementById("app");
root.textContent = "";
render(html`<${App} />`, root);
