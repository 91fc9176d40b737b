// Herald admin view: polls the read-only JSON endpoints under /admin/api with the operator's
// secret key. Every value is rendered with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("herald-admin-key") || "";
let timer = null;

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${key}` } });
  const body = await res.json();
  if (!res.ok) throw new Error(body.message || body.error || res.statusText);
  return body;
}

function cell(row, text, code = false) {
  const td = row.insertCell();
  if (code) {
    const c = document.createElement("code");
    c.textContent = text;
    td.appendChild(c);
  } else {
    td.textContent = text;
  }
  return td;
}

function since(unix) {
  const secs = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m`;
  return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
}

function renderOverview(o) {
  const items = [
    ["App", o.appId],
    ["Connections", o.app.connections],
    ["Peak", o.app.peakConnections],
    ["Channels", o.app.channels],
    ["Subscriptions", o.app.subscriptions],
    ["Messages used", o.app.messagesUsed],
    ["Node sessions", o.node.sessions],
    ["Uptime", since(Date.now() / 1000 - o.node.uptimeSecs)],
    ["Engine", o.node.engineReady ? "ready" : "not ready"],
  ];
  const dl = $("overview");
  dl.replaceChildren(
    ...items.map(([label, value]) => {
      const box = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = String(value);
      box.append(dt, dd);
      return box;
    }),
  );
}

function renderConnections(rows, tbody) {
  tbody.replaceChildren();
  for (const c of rows) {
    const row = tbody.insertRow();
    cell(row, c.connId, true);
    cell(row, c.peerId, true);
    cell(row, c.kind);
    cell(row, since(c.connectedAt));
    cell(row, c.channels.join(", ") || "—");
  }
}

async function refresh() {
  try {
    const [overview, channels, connections] = await Promise.all([
      api("/admin/api/overview"),
      api("/admin/api/channels"),
      api("/admin/api/connections"),
    ]);
    renderOverview(overview);
    const tbody = $("channels");
    tbody.replaceChildren();
    for (const c of channels.channels) {
      const row = tbody.insertRow();
      cell(row, c.channel, true);
      cell(row, c.members);
      cell(row, c.subscribers);
    }
    $("channel-count").textContent = `(${channels.channels.length})`;
    renderConnections(connections.connections, $("connections"));
    $("connection-count").textContent = `(${connections.connections.length})`;
    $("status").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "muted";
    $("views").hidden = false;
  } catch (err) {
    $("status").textContent = `Error: ${err.message}`;
    $("status").className = "error";
  }
}

function showResult(target, build) {
  target.replaceChildren();
  build().catch((err) => {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = err.message;
    target.appendChild(p);
  });
}

$("peer-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const target = $("peer-result");
  showResult(target, async () => {
    const r = await api(`/admin/api/peers/${encodeURIComponent($("peer-id").value)}`);
    const p = document.createElement("p");
    p.textContent = r.online ? `${r.peerId}: ${r.connections.length} connection(s) on this node` : `${r.peerId} is not connected to this node`;
    target.appendChild(p);
    if (r.online) {
      const table = document.createElement("table");
      renderConnections(r.connections, table.createTBody());
      target.appendChild(table);
    }
  });
});

$("channel-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const target = $("channel-result");
  showResult(target, async () => {
    const r = await api(`/admin/api/channels/${encodeURIComponent($("channel-id").value)}`);
    const p = document.createElement("p");
    p.textContent = `${r.channel}: ${r.members.length} member(s), ${r.localSubscribers} subscriber(s) here`;
    target.appendChild(p);
    const ul = document.createElement("ul");
    for (const m of r.members) {
      const li = document.createElement("li");
      const name = m.metadata && typeof m.metadata.username === "string" ? ` (${m.metadata.username})` : "";
      li.textContent = `${m.peerId}${name}`;
      ul.appendChild(li);
    }
    target.appendChild(ul);
  });
});

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("herald-admin-key", key);
  start();
});

function start() {
  clearInterval(timer);
  refresh();
  timer = setInterval(refresh, 2000);
}

if (key) {
  $("key").value = key;
  start();
}
