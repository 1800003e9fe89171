// Shared by every page: the nav bar, the bearer token (typed once, kept in sessionStorage), calls to
// /api/v1 and small DOM helpers. No framework, nothing fetched from outside the node.
"use strict";

// One line per page; the smart branch adds ["/smart", "Smart Licensing"].
const NAV = [
  ["/", "Resource usage"], ["/registrations", "Registrations"], ["/calls", "Calls"],
  ["/option-keys", "Option keys"], ["/alarms", "Alarms"], ["/history", "Usage history"],
];
const TOKEN_KEY = "meter-admin-token";

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch("/api/v1/" + path, {
    method: options.method || "GET", headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (reply.status === 204) return null;
  const doc = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
  if (!reply.ok) {
    if (reply.status === 401) showTokenHint();
    throw new ApiError(reply.status, doc.error || `HTTP ${reply.status}`);
  }
  return doc;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function td(text, numeric) { return el("td", numeric ? { class: "n", text: String(text) } : { text: String(text) }); }

function when(epoch) {
  if (epoch === null || epoch === undefined) return "—";
  return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? `${h}h ` : "") + `${m}m ${s % 60}s`;
}

function percent(part, whole) { return whole ? `${Math.round((part / whole) * 1000) / 10}%` : "—"; }

function setStatus(text, isError) {
  const status = document.getElementById("status");
  if (status) { status.textContent = text; status.className = isError ? "error" : "muted"; }
}

function showTokenHint() {
  setStatus("the node wants the admin token: type it in the field at the top right", true);
}

// Rule IDs with their text on hover (from /api/v1/rules, fetched once).
let rulesByID = null;
async function loadRules() {
  if (rulesByID) return rulesByID;
  try {
    const doc = await api("rules");
    rulesByID = Object.fromEntries(doc.items.map((r) => [r.id, r.text]));
  } catch (err) { rulesByID = {}; }
  return rulesByID;
}

function ruleCell(ids) {
  const cell = el("td");
  for (const id of ids || []) cell.append(el("span", { class: "rule", "data-rule": id, text: id }));
  return cell;
}

function installTooltip() {
  const tip = el("div", { id: "tooltip", role: "tooltip" });
  tip.hidden = true;
  document.body.append(tip);
  document.addEventListener("mouseover", async (event) => {
    const target = event.target.closest ? event.target.closest(".rule") : null;
    if (!target) { tip.hidden = true; return; }
    const rules = await loadRules();
    const id = target.dataset.rule;
    tip.textContent = `${id}: ${rules[id] || "(no such rule in docs/licensing-rules.md)"}`;
    const box = target.getBoundingClientRect();
    tip.style.left = `${window.scrollX + box.left}px`;
    tip.style.top = `${window.scrollY + box.bottom + 4}px`;
    tip.hidden = false;
  });
}

function installChrome() {
  const nav = el("nav");
  for (const [href, label] of NAV) {
    const link = el("a", { href, text: label });
    if (location.pathname === href) link.className = "here";
    nav.append(link);
  }
  const input = el("input", { id: "token", type: "password", placeholder: "admin token", autocomplete: "off" });
  const save = el("button", { id: "token-save", type: "button", text: token() ? "Change" : "Use token" });
  save.addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    save.textContent = "Change";
    refreshPage();
  });
  const header = el("header", {}, el("span", { class: "brand", text: "meter" }),
                    el("span", { class: "node", id: "node" }), nav,
                    el("span", { id: "token-box" }, input, " ", save));
  document.body.prepend(header);
  installTooltip();
  api("status").then((s) => {
    document.getElementById("node").textContent = `${s.node} (Expressway-${s.role}, ${s.mode}, ${s.enforcement})`;
    const banner = document.getElementById("banner");
    if (banner) { banner.textContent = s.banner || ""; banner.hidden = !s.banner; }
  }).catch(() => {});
}

let refreshPage = () => {};

// A page calls this once with its refresh function (and a period for live pages).
function page(refresh, periodMs) {
  refreshPage = async () => {
    try { await refresh(); setStatus("updated " + new Date().toISOString()); }
    catch (err) { if (err.status !== 401) setStatus(String(err.message || err), true); else showTokenHint(); }
  };
  document.addEventListener("DOMContentLoaded", () => {
    installChrome();
    refreshPage();
    if (periodMs) setInterval(refreshPage, periodMs);
  });
}
