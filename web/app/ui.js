// DOM helpers for the demo. Everything a user or a remote peer controls reaches the page as
// text (text nodes, `textContent`, attribute values) and never as markup: this file has no
// innerHTML, and neither does any other file of the app.

/**
 * Builds an element. `props`: className, text, dataset, attrs (plain attributes), on (event
 * handlers), plus a few properties (type, value, disabled, hidden, title). Children are nodes or
 * strings; strings become text nodes.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { className, text, dataset, attrs, on, ...rest } = props;
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (dataset) for (const [k, v] of Object.entries(dataset)) node.dataset[k] = String(v);
  if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (on) for (const [k, v] of Object.entries(on)) node.addEventListener(k, v);
  for (const [k, v] of Object.entries(rest)) node[k] = v;
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export const PALETTE = ["#4f46e5", "#0891b2", "#059669", "#ca8a04", "#dc2626", "#db2777", "#7c3aed", "#475569"];

function hash(text) {
  let h = 0;
  for (const ch of String(text)) h = (Math.imul(h, 31) + ch.codePointAt(0)) >>> 0;
  return h;
}

/** A `#rrggbb` colour from metadata, or one picked from the palette by peer id. */
export function safeColor(color, peerId) {
  if (typeof color === "string" && /^#[0-9a-f]{6}$/i.test(color)) return color;
  return PALETTE[hash(peerId) % PALETTE.length];
}

/** An avatar URL worth loading: http(s) or a path on this server; anything else is ignored. */
export function safeAvatarUrl(url) {
  if (typeof url !== "string" || url.length > 512) return null;
  if (/^https?:\/\/[^\s\\]+$/i.test(url)) return url;
  if (/^\/(?![/\\])[^\s\\]*$/.test(url)) return url;
  return null;
}

/** The name to show: `username` from metadata (trimmed, capped), else the peer id. */
export function displayName(meta, peerId) {
  const name = meta && typeof meta.username === "string" ? meta.username.trim() : "";
  return (name || String(peerId)).slice(0, 60);
}

function initial(name) {
  const first = [...name.trim()][0] ?? "?";
  return first.toUpperCase();
}

/** A round avatar: the initial on the peer's colour, covered by the avatar image if one loads. */
export function avatar(meta, peerId, size = "md") {
  const name = displayName(meta, peerId);
  const node = el("span", { className: `avatar avatar-${size}`, attrs: { "aria-hidden": "true" } });
  node.style.backgroundColor = safeColor(meta?.color, peerId);
  node.append(el("span", { className: "avatar-initial", text: initial(name) }));
  const url = safeAvatarUrl(meta?.avatarUrl);
  if (url) {
    const img = el("img", { className: "avatar-img", alt: "", referrerPolicy: "no-referrer", decoding: "async" });
    img.addEventListener("error", () => img.remove());
    img.src = url;
    node.append(img);
  }
  return node;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "Ana", "Ana and Bo", "Ana, Bo and Cy", "Several people". */
export function nameList(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return names[0];
  if (names.length <= 3) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  return "Several people";
}

/** Shows a short-lived notice at the bottom of the screen. */
export function toast(text, kind = "info") {
  const host = document.getElementById("toasts");
  if (!host) return;
  const node = el("div", { className: `toast toast-${kind}`, text, attrs: { role: "status" } });
  host.append(node);
  setTimeout(() => node.remove(), 5000);
}
