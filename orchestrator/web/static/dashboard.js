// The orchestrator dashboard: polls the overview, fills the lists, asks before a redrive.
// Plain browser JavaScript, no build step, no library. Data is put in the page as text only.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const REFRESH_MS = Number(document.body.dataset.refreshMs) || 2000;
const TOKEN_REQUIRED = document.body.dataset.tokenRequired === "yes";
const WORKFLOWS = JSON.parse($("#workflows").textContent);
const state = { dead: [], deadTotal: null, stuckTotal: null, tab: "dead", timeline: null };

// -- small helpers ---------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

async function getJSON(url, tries = 3) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (response.status === 429 && tries > 1) {  // shared beyond localhost: another read runs
    const wait = Math.min(5, Number(response.headers.get("Retry-After")) || 1);
    await new Promise((resume) => setTimeout(resume, wait * 1000));
    return getJSON(url, tries - 1);
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function postJSON(url, body) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("orchestrator-token");
  if (token) headers["X-Orchestrator-Token"] = token;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json();
  if (response.status === 401) sessionStorage.removeItem("orchestrator-token");
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function seconds(value) {
  if (value === null || value === undefined) return "·";
  const s = Math.max(0, value);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + "." +
    String(d.getMilliseconds()).padStart(3, "0");
}

function between(from, to) {
  return from && to ? seconds((new Date(to) - new Date(from)) / 1000) : "";
}

function shortHandler(name) { return name ? name.split(".").pop() : ""; }

function change(e) {
  const from = e.old_value === null ? "∅" : e.old_value;
  const what = e.op === "TIMER" ? "deadline " : "";
  return `${what}${e.column_name}: ${from} → ${e.new_value}`;
}

function pill(text, kind) { return el("span", { class: `pill ${kind || text}`, text }); }

function rowLink(workflow, key) {
  return el("a", { href: "#", class: "rowlink", "data-workflow": workflow, "data-key": key,
    text: key, onclick: (ev) => { ev.preventDefault(); openTimeline(workflow, key); } });
}

function flash(message, isError = false) {
  const box = $("#flash");
  box.textContent = message;
  box.className = isError ? "flash error" : "flash";
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

// Fill a table: columns are [heading, row => cell content, optional class].
function fillTable(table, columns, rows, emptyText) {
  const head = el("tr", {}, ...columns.map(([title]) => el("th", { text: title })));
  const body = el("tbody");
  for (const row of rows) {
    body.append(el("tr", {}, ...columns.map(([, cell, cls]) => {
      const content = cell(row);
      return el("td", cls ? { class: cls } : {},
        content instanceof Node ? content : String(content ?? ""));
    })));
  }
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: columns.length,
      text: emptyText })));
  }
  table.replaceChildren(el("thead", {}, head), body);
}

// -- the overview ----------------------------------------------------------------------------

async function refresh() {
  try {
    const overview = await getJSON("/api/overview");
    renderOverview(overview);
    const live = $("#live");
    live.className = overview.error ? "live down" : "live ok";
    live.textContent = overview.error ? `database unreachable: ${overview.error}`
      : `live · ${clock(overview.at).slice(0, 8)}`;
  } catch (err) {
    $("#live").className = "live down";
    $("#live").textContent = `dashboard unreachable (${err.message})`;
  }
  setTimeout(refresh, REFRESH_MS);
}

function renderOverview(overview) {
  let dead = 0;
  let stuck = 0;
  for (const wf of overview.workflows) {
    const section = $(`section.workflow[data-workflow="${CSS.escape(wf.name)}"]`);
    if (!section) continue;
    const stuckHere = Object.values(wf.stuck).reduce((a, b) => a + b, 0);
    dead += wf.events.dead;
    stuck += stuckHere;
    renderStates(section, wf);
    renderKpis(section, wf, stuckHere);
  }
  renderLimits(overview.limits || []);
  $("#dead-count").textContent = dead || "";
  $("#stuck-count").textContent = stuck || "";
  // Lists are reloaded when what they show changed, not on every tick: a table redrawn under
  // the pointer would swallow clicks. A tab that is not shown reloads when it is opened.
  if (dead !== state.deadTotal) {
    state.deadTotal = dead;
    if (state.tab === "dead") loadDead();
  }
  if (stuck !== state.stuckTotal) {
    state.stuckTotal = stuck;
    if (state.tab === "stuck") loadStuck();
  }
}

// A row per fleet-wide limit: runs at once against the bound, the rate, the waits so far.
function renderLimits(limits) {
  $("#limits").hidden = limits.length === 0;
  const table = $("#limits-table");
  table.replaceChildren();
  const head = table.insertRow();
  for (const title of ["limit", "running", "at once", "per second", "waits for a turn"]) {
    head.appendChild(document.createElement("th")).textContent = title;
  }
  for (const lim of limits) {
    const row = table.insertRow();
    const full = lim.max_running !== null && lim.running >= lim.max_running;
    for (const text of [lim.name, lim.running, lim.max_running ?? "·", lim.per_s ?? "·",
                        lim.waits]) {
      row.insertCell().textContent = text;
    }
    row.classList.toggle("warn", full);
  }
}

function renderStates(section, wf) {
  for (const node of $$("g.state", section)) {
    const name = node.dataset.state;
    const count = wf.states[name] ?? 0;
    $("text.count", node).textContent = count;
    node.classList.toggle("has", count > 0);
    node.classList.toggle("busy", count > 0 && !node.classList.contains("terminal") &&
      !node.classList.contains("failure"));
    const stuck = wf.stuck[name] || 0;
    const badge = $("g.stuck", node);
    badge.setAttribute("visibility", stuck ? "visible" : "hidden");
    if (stuck) sizeBadge(node, badge, `${stuck} stuck`);
  }
}

// The badge sits on the box's top right corner and grows to fit its text.
function sizeBadge(node, badge, text) {
  const box = $("rect", node);
  const label = $("text", badge);
  label.textContent = text;
  const width = label.getComputedTextLength() + 14;
  const right = Number(box.getAttribute("x")) + Number(box.getAttribute("width")) + 8;
  const pill = $("rect", badge);
  pill.setAttribute("width", width);
  pill.setAttribute("x", right - width);
  label.setAttribute("x", right - width / 2);
}

function setKpi(section, name, text, level) {
  const kpi = $(`.kpi[data-kpi="${name}"]`, section);
  $("b", kpi).textContent = text;
  kpi.classList.toggle("warn", level === "warn");
  kpi.classList.toggle("bad", level === "bad");
}

function renderKpis(section, wf, stuck) {
  const ev = wf.events;
  const rate = wf.throughput_per_s;
  setKpi(section, "throughput", rate === null ? "measuring…" : rate.toFixed(rate < 10 ? 1 : 0));
  setKpi(section, "due", ev.due, ev.due > 0 && ev.oldest_due_age_s > 5 ? "warn" : null);
  setKpi(section, "oldest", ev.oldest_due_age_s === null ? "none" : seconds(ev.oldest_due_age_s),
    ev.oldest_due_age_s > 5 ? "warn" : null);
  setKpi(section, "lag", wf.lag ? `${seconds(wf.lag.p50)} · ${seconds(wf.lag.max)}` : "·");
  setKpi(section, "running", ev.running);
  setKpi(section, "waiting", ev.waiting, ev.waiting ? "warn" : null);
  setKpi(section, "stuck", stuck, stuck ? "warn" : null);
  setKpi(section, "dead", ev.dead, ev.dead ? "bad" : null);
  const points = wf.series.slice(-60);
  const top = Math.max(1, ...points.map(([, v]) => v));
  $(".spark polyline", section).setAttribute("points", points.map(([, v], i) =>
    `${(i * 120) / Math.max(1, points.length - 1)},${27 - (v / top) * 25}`).join(" "));
}

// -- the lists -------------------------------------------------------------------------------

async function loadDead() {
  try {
    const form = $("#dead-filters");
    const params = new URLSearchParams({ status: "dead", limit: "500" });
    if (form.workflow.value) params.set("workflow", form.workflow.value);
    state.dead = await getJSON(`/api/events?${params}`);
    fillHandlers(form.handler, state.dead);
    renderDead();
  } catch (err) { flash(`dead events: ${err.message}`, true); }
}

function fillHandlers(select, events) {
  const chosen = select.value;
  const names = [...new Set(events.map((e) => e.handler).filter(Boolean))].sort();
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...names.map((n) => el("option", { value: n, text: shortHandler(n) })));
  select.value = names.includes(chosen) ? chosen : "";
}

function deadShown() {
  const handler = $("#dead-filters").handler.value;
  return state.dead.filter((e) => !handler || e.handler === handler);
}

function renderDead() {
  fillTable($("#dead-table"), [
    ["event", (e) => e.id, "mono num"],
    ["workflow", (e) => e.workflow],
    ["row", (e) => rowLink(e.workflow, e.row_key)],
    ["change", (e) => change(e), "nowrap"],
    ["handler", (e) => shortHandler(e.handler)],
    ["attempts", (e) => e.attempts, "num"],
    ["died", (e) => clock(e.finished_at), "mono"],
    ["error", (e) => e.last_error, "error"],
    ["", (e) => el("button", { class: "small danger redrive", "data-event": e.id,
      text: "Redrive", onclick: () => redriveOne(e) })],
  ], deadShown(), "No dead events. Nothing needs an operator.");
}

const ROW_COLUMNS = [
  ["workflow", (r) => r.workflow],
  ["row", (r) => rowLink(r.workflow, r.key)],
  ["state", (r) => pill(r.state, "")],
  ["in state for", (r) => (r.age_s === null ? "?" : seconds(r.age_s)), "num"],
  ["latest event", (r) => (r.event_id ? `${r.event_id} · ${change(r)}` : ""), "nowrap"],
  ["handler", (r) => shortHandler(r.handler)],
  ["why it is there", (r) => r.why, "why"],
];

async function loadStuck() {
  try {
    fillTable($("#stuck-table"), ROW_COLUMNS, await getJSON("/api/rows?stuck=1&limit=200"),
      "Nothing is stuck.");
  } catch (err) { flash(`stuck rows: ${err.message}`, true); }
}

function fillStates() {
  const form = $("#rows-filters");
  const wf = WORKFLOWS.find((w) => w.name === form.workflow.value) || WORKFLOWS[0];
  const chosen = form.state.value;
  form.state.replaceChildren(...wf.states.map((s) => el("option", { text: s })));
  if (wf.states.includes(chosen)) form.state.value = chosen;
}

async function loadRows() {
  const form = $("#rows-filters");
  const params = new URLSearchParams({ workflow: form.workflow.value, state: form.state.value,
    limit: "200" });
  try {
    fillTable($("#rows-table"), ROW_COLUMNS, await getJSON(`/api/rows?${params}`),
      `No row is ${form.state.value}.`);
  } catch (err) { flash(`rows: ${err.message}`, true); }
}

async function loadEvents() {
  const form = $("#events-filters");
  const params = new URLSearchParams({ limit: "200" });
  for (const name of ["status", "workflow", "row", "search"]) {
    if (form[name].value.trim()) params.set(name, form[name].value.trim());
  }
  try {
    fillTable($("#events-table"), [
      ["event", (e) => e.id, "mono num"],
      ["recorded", (e) => clock(e.created_at), "mono"],
      ["workflow", (e) => e.workflow],
      ["row", (e) => rowLink(e.workflow, e.row_key)],
      ["change", (e) => change(e), "nowrap"],
      ["handler", (e) => shortHandler(e.handler)],
      ["status", (e) => pill(e.status)],
      ["outcome", (e) => e.outcome || ""],
      ["attempts", (e) => e.attempts, "num"],
      ["took", (e) => between(e.started_at, e.finished_at), "num"],
      ["last error", (e) => e.last_error || "", "error"],
    ], await getJSON(`/api/events?${params}`), "No event matches.");
  } catch (err) { flash(`events: ${err.message}`, true); }
}

// -- one row's timeline ----------------------------------------------------------------------

async function openTimeline(workflow, key) {
  state.timeline = { workflow, key };
  showTab("timeline");
  const head = $("#timeline-head");
  try {
    const params = new URLSearchParams({ workflow, key });
    const h = await getJSON(`/api/history?${params}`);
    head.replaceChildren(el("h3", { text: `${h.workflow} ${h.key}` }),
      el("span", {}, "now ", pill(h.state, "")),
      el("span", { class: "hint", text: `${h.events.length} events, oldest first` }),
      ...(h.pruned_before ? [el("p", { class: "hint pruned", text: "Older history pruned: " +
        `events finished before ${new Date(h.pruned_before).toLocaleString()} are no longer kept.` })] : []));
    fillTable($("#timeline-table"), [
      ["event", (e) => e.id, "mono num"],
      ["recorded", (e) => clock(e.created_at), "mono"],
      ["change", (e) => change(e), "nowrap"],
      ["handler", (e) => (e.op === "TIMER" ? "deadline" : shortHandler(e.handler))],
      ["status", (e) => pill(e.status)],
      ["outcome", (e) => e.outcome || ""],
      ["next", (e) => e.next_state || ""],
      ["attempts", (e) => e.attempts, "num"],
      ["waited", (e) => (e.op === "TIMER" ? "" : between(e.created_at, e.started_at)), "num"],
      ["took", (e) => between(e.started_at, e.finished_at), "num"],
      ["finished", (e) => clock(e.finished_at), "mono"],
      ["errors", (e) => errorList(e)],
      ["", (e) => (e.status === "dead" ? el("button", { class: "small danger redrive",
        "data-event": e.id, text: "Redrive", onclick: () => redriveOne(e) }) : "")],
    ], h.events, "No event recorded for this row.");
  } catch (err) {
    head.replaceChildren(el("p", { class: "hint", text: err.message }));
    $("#timeline-table").replaceChildren();
  }
}

function errorList(e) {
  if (!e.errors.length) return "";
  return el("ul", { class: "errors" }, ...e.errors.map((x) => el("li",
    { class: x.attempt === 0 ? "redrive" : "", title: x.at },
    x.attempt === 0 ? `${clock(x.at)} ${x.error}` : `#${x.attempt} ${clock(x.at)} ${x.error}`)));
}

// -- redrive ---------------------------------------------------------------------------------

function confirmDialog(intro, events) {
  const dialog = $("#confirm");
  const list = el("ul", {}, ...events.slice(0, 50).map((e) => el("li",
    { text: `${e.id} · ${e.workflow} ${e.key ?? e.row_key} · ${shortHandler(e.handler)}` })));
  const more = events.length > 50 ? el("p", { text: `… and ${events.length - 50} more` }) : null;
  const note = el("p", { class: "hint", text: "They go back to the queue with fresh attempts; " +
    "a row their death moved to the failure state returns to the state the event saw." });
  $("#confirm-text").replaceChildren(...[el("p", { text: intro }), list, more, note]
    .filter(Boolean));
  const tokenField = $("#token-field");
  tokenField.hidden = !TOKEN_REQUIRED || Boolean(sessionStorage.getItem("orchestrator-token"));
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const typed = $("input", tokenField).value;
      if (typed) sessionStorage.setItem("orchestrator-token", typed);
      resolve(dialog.returnValue === "ok");
    }, { once: true });
  });
}

async function redrive(body) {
  try {
    const done = await postJSON("/api/redrive", body);
    flash(`Redriven: ${done.events.length} event(s) back in the queue.`);
  } catch (err) {
    flash(`Redrive refused: ${err.message}`, true);
  }
  await loadDead();
  if (state.timeline) openTimeline(state.timeline.workflow, state.timeline.key);
}

async function redriveOne(e) {
  const intro = `Redrive dead event ${e.id} (${e.workflow} row ${e.row_key})?`;
  if (await confirmDialog(intro, [e])) await redrive({ ids: [e.id] });
}

async function redriveMatching() {
  const form = $("#dead-filters");
  const filters = { dead: true, workflow: form.workflow.value || null,
    handler: form.handler.value || null };
  try {
    const preview = await postJSON("/api/redrive", { ...filters, dry_run: true });
    if (!preview.events.length) { flash("No dead event matches."); return; }
    const which = [form.workflow.value && `workflow ${form.workflow.value}`,
      form.handler.value && `handler ${shortHandler(form.handler.value)}`].filter(Boolean);
    const intro = `Redrive ${preview.events.length} dead event(s)` +
      (which.length ? ` of ${which.join(", ")}?` : "?");
    if (await confirmDialog(intro, preview.events)) await redrive(filters);
  } catch (err) { flash(`Redrive refused: ${err.message}`, true); }
}

// -- tabs and wiring -------------------------------------------------------------------------

function showTab(name) {
  state.tab = name;
  for (const button of $$(".tabs button")) button.classList.toggle("on", button.dataset.tab === name);
  for (const tab of $$(".tab")) tab.classList.toggle("on", tab.id === `tab-${name}`);
  if (name === "dead") loadDead();
  if (name === "stuck") loadStuck();
  if (name === "rows") loadRows();
  if (name === "events") loadEvents();
}

function wire() {
  for (const button of $$(".tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("#find").addEventListener("submit", (ev) => {
    ev.preventDefault();
    openTimeline(ev.target.workflow.value, ev.target.key.value.trim());
  });
  $("#dead-filters").workflow.addEventListener("change", loadDead);
  $("#dead-filters").handler.addEventListener("change", renderDead);
  $("#redrive-matching").addEventListener("click", redriveMatching);
  $("#rows-filters").workflow.addEventListener("change", () => { fillStates(); loadRows(); });
  $("#rows-filters").state.addEventListener("change", loadRows);
  $("#events-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadEvents(); });
  for (const node of $$("g.state")) {
    const open = () => {
      const form = $("#rows-filters");
      form.workflow.value = node.closest("svg").dataset.workflow;
      fillStates();
      form.state.value = node.dataset.state;
      showTab("rows");
    };
    node.addEventListener("click", open);
    node.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
  }
  fillStates();
}

wire();
refresh();
