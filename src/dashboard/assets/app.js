// orchestr8 dashboard: one page, drawn from the engine's JSON, kept current by its event feed.
// No framework and no build step: the engine serves this file as it is.
"use strict";

const BASE = "/dashboard";
const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
const MAX_LOG_LINES = 5000; // a log left streaming for a day must not grow the page without end
let key = ""; // the page key: sent with every data request (see takeKey)
let gen = 0; // bumped at each navigation: a view's late answers must not draw over the next one
let view = null; // the current view: { load(), changed(ev), log(lines), stop() }
let feed = null; // the EventSource
let feedTask = null;

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v; // through the CSSOM: the page's CSP forbids style attributes
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

// Replaces an element's children, leaving out the absent ones (null, undefined, false).
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat(Infinity)) {
    if (kid !== null && kid !== undefined && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

async function api(path) {
  const r = await fetch(BASE + "/api" + path, { headers: { accept: "application/json", "x-orchestr8-key": key } });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function act(path) {
  const r = await fetch(BASE + "/api" + path, {
    method: "POST",
    headers: { "x-orchestr8-key": key, accept: "application/json" },
  });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function toast(msg, bad) {
  const el = h("div", { class: bad ? "bad" : "" }, msg);
  document.getElementById("toast").append(el);
  setTimeout(() => el.remove(), bad ? 9000 : 4000);
}

function badge(status) {
  return h("span", { class: "badge", "data-status": status }, status);
}

function link(path, ...kids) {
  return h("a", { href: BASE + path }, ...kids);
}

function ms(iso) { return iso ? Date.parse(iso) : null; }

function duration(msecs) {
  if (msecs === null || msecs === undefined || isNaN(msecs)) return "";
  const s = Math.max(0, Math.round(msecs / 1000));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return hrs + " h " + (m % 60) + " min";
  return Math.floor(hrs / 24) + " d " + (hrs % 24) + " h";
}

function ago(iso) {
  const t = ms(iso);
  if (!t) return "";
  return duration(Date.now() - t) + " ago";
}

function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, "data-ago": iso, title: new Date(iso).toLocaleString() }, ago(iso));
}

// A duration that keeps counting while the page is open.
function since(iso) {
  return h("span", { "data-since": iso || "" }, iso ? duration(Date.now() - ms(iso)) : "—");
}

function ran(t) {
  const a = ms(t.started_at);
  if (!a) return "";
  return duration((t.completed_at ? ms(t.completed_at) : Date.now()) - a);
}

function usd(x) {
  if (x === null || x === undefined) return "—";
  return "$" + (x >= 100 ? x.toFixed(0) : x >= 0.1 || x === 0 ? x.toFixed(2) : x.toFixed(4));
}

function query() { return new URLSearchParams(location.search); }

function loading(el) { el.replaceChildren(h("div", { class: "empty" }, "Loading…")); }

function failure(el, e) {
  el.replaceChildren(h("div", { class: "panel" }, h("pre", { class: "error" }, String(e.message || e))));
}

// Runs fn at most once per `wait` ms, the last call winning.
function throttle(fn, wait) {
  let timer = null, again = false;
  return function run() {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(() => { timer = null; if (again) { again = false; run(); } }, wait);
  };
}

// ---- charts ------------------------------------------------------------------------------

// Vertical bars; `series` is [{key, cls}], `rows` objects with a label and one number per key.
function bars(rows, series, label, fmt) {
  const W = 560, H = 170, top = 10, bottom = 26, left = 52;
  const max = Math.max(1e-9, ...rows.map((r) => series.reduce((a, s) => a + (r[s.key] || 0), 0)));
  const bw = (W - left) / Math.max(1, rows.length);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const f of [0, 0.5, 1]) {
    const y = top + (H - top - bottom) * (1 - f);
    g.append(svg("line", { x1: left, x2: W, y1: y, y2: y, class: "axis" }));
    g.append(svg("text", { x: left - 6, y: y + 3, "text-anchor": "end" }, fmt(max * f)));
  }
  rows.forEach((r, i) => {
    let y = H - bottom;
    const parts = [];
    for (const s of series) {
      const v = r[s.key] || 0;
      const hgt = ((H - top - bottom) * v) / max;
      y -= hgt;
      if (v > 0) parts.push(svg("rect", { x: left + i * bw + 1, y, width: Math.max(1, bw - 2), height: hgt, class: s.cls },
        svg("title", {}, `${label(r)}: ${s.key} ${fmt(v)}`)));
    }
    g.append(...parts);
    const every = Math.ceil(rows.length / 8);
    if (i % every === 0) g.append(svg("text", { x: left + i * bw + bw / 2, y: H - 8, "text-anchor": "middle" }, label(r)));
  });
  return h("div", { class: "chart" }, g);
}

function legend(items) {
  return h("div", { class: "legend" }, items.map(([s, text]) => h("span", { "data-status": s }, h("i"), text)));
}

// ---- the live feed -----------------------------------------------------------------------

function setLive(state, title) {
  const el = document.getElementById("live");
  el.dataset.state = state;
  el.textContent = state === "live" ? "live" : state === "lost" ? "reconnecting…" : "connecting";
  el.title = title;
}

// Follows the engine's changes; `task`: also that task's log lines. Every (re)connection
// starts with `ready`, after which the view loads: nothing falls between load and feed.
function follow(task) {
  if (feed && feedTask === task && feed.readyState !== EventSource.CLOSED) return;
  if (feed) feed.close();
  feedTask = task;
  const q = new URLSearchParams({ k: key });
  if (task) q.set("task", task);
  const source = new EventSource(BASE + "/api/events?" + q);
  feed = source;
  source.addEventListener("ready", () => {
    setLive("live", "Changes appear as they happen");
    if (view) view.load();
  });
  source.addEventListener("changed", (e) => { if (view && view.changed) view.changed(JSON.parse(e.data)); });
  source.addEventListener("log", (e) => { if (view && view.log) view.log(JSON.parse(e.data)); });
  source.addEventListener("resync", resync);
  source.onerror = () => {
    setLive("lost", "The engine does not answer; trying again (an engine that restarted has a new address: run `orchestr8-async-server dashboard`)");
    if (source.readyState !== EventSource.CLOSED) return; // the browser tries again by itself
    // Refused (signed out: the engine restarted; a bad address) or gone: find out which.
    setTimeout(() => {
      if (feed !== source) return;
      api("/session").then(() => {
        // Signed in, but this feed was refused: show the page (and its error), try later.
        if (view) view.load();
        setTimeout(() => { if (feed === source) { feed = null; follow(feedTask); } }, 10000);
      }, (e) => {
        if (/not signed in/.test(e.message)) signedOut(e.message);
        else { feed = null; follow(feedTask); }
      });
    }, 3000);
  };
}

// A feed that fell behind: reload what the page shows, at most once a second.
const resync = throttle(() => { if (view) view.load(); }, 1000);

function signedOut(message) {
  if (feed) feed.close();
  feed = null;
  setLive("lost", "Signed out");
  document.getElementById("view").replaceChildren(h("div", { class: "panel refused" }, h("h1", {}, "Signed out"), h("p", { id: "refused" }, message)));
}

// ---- views -------------------------------------------------------------------------------

function overview(root, alive) {
  let failedRows = null;
  const load = async () => {
    try {
      const [o, failed] = await Promise.all([
        api("/overview"),
        api("/tasks?status=failed&limit=8"),
      ]);
      if (!alive()) return;
      const counts = Object.fromEntries(o.counts);
      const cards = h("div", { class: "cards" }, STATUSES.map((s) =>
        h("a", { class: "card", href: `${BASE}/tasks?status=${s}`, "data-status": s, style: `--c: var(--${s})`, "data-count": s },
          h("div", { class: "n" }, (counts[s] || 0).toLocaleString()), h("div", { class: "k" }, s))));
      const running = o.running.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Agent"), h("th", { class: "num" }, "Running for"), h("th", { class: "num" }, "Attempt"))),
          h("tbody", {}, o.running.map((t) => h("tr", {},
            h("td", {}, link("/tasks/" + t.task_id, t.name)), h("td", {}, t.agent_name),
            h("td", { class: "num" }, since(t.started_at)), h("td", { class: "num" }, t.attempt)))))
        : h("div", { class: "empty" }, "Nothing is running.");
      failedRows = failed.tasks.length
        ? h("table", {}, h("tbody", {}, failed.tasks.map((t) => h("tr", {},
            h("td", { class: "nowrap" }, link("/tasks/" + t.task_id, t.name)), h("td", { class: "muted" }, t.agent_name),
            h("td", { class: "err fill", title: t.error || "" }, t.error || ""), h("td", { class: "num muted nowrap" }, when(t.completed_at))))))
        : h("div", { class: "empty" }, "No failed tasks.");
      const hourLabel = (r) => new Date(r.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      fill(root, 
        h("div", { class: "head" }, h("h1", {}, "Overview"), h("span", { class: "sub" }, `${o.running_total} running`)),
        cards,
        h("div", { class: "grid two" },
          h("section", { class: "panel" }, h("h2", {}, `Running now (${o.running_total})`), running),
          h("section", { class: "panel" }, h("h2", {}, "Recently failed"), failedRows)),
        h("div", { class: "grid two" },
          h("section", { class: "panel" }, h("h2", {}, "Finished per hour, last 24 h"),
            bars(o.ended, [{ key: "completed", cls: "completed" }, { key: "failed", cls: "failed" }, { key: "cancelled", cls: "cancelled" }], hourLabel, (v) => Math.round(v)),
            legend([["completed", "completed"], ["failed", "failed"], ["cancelled", "cancelled"]])),
          h("section", { class: "panel" }, h("h2", {}, "How long completed tasks took, last 7 days"),
            bars(o.durations.map((d) => ({ label: d.label, tasks: d.tasks })), [{ key: "tasks", cls: "plain" }], (r) => r.label, (v) => Math.round(v)))),
        h("div", { class: "grid two" },
          h("section", { class: "panel" }, h("h2", {}, "Cost per day (UTC), last 14 days"),
            bars(o.cost_by_day, [{ key: "cost_usd", cls: "plain" }], (r) => r.day.slice(5), usd)),
          h("section", { class: "panel" }, h("h2", {}, "Cost per agent, last 14 days"),
            o.cost_by_agent.length
              ? h("table", {}, h("tbody", {}, o.cost_by_agent.map((c) => h("tr", {},
                  h("td", {}, link("/tasks?agent_name=" + encodeURIComponent(c.agent_name), c.agent_name)),
                  h("td", { class: "num" }, c.tasks.toLocaleString() + " tasks"),
                  h("td", { class: "num" }, usd(c.cost_usd))))))
              : h("div", { class: "empty" }, "No costs recorded (only agents that report usage have one)."))),
      );
    } catch (e) { failure(root, e); }
  };
  // Aggregates over every task: at most every 5 s, however busy the engine.
  const reload = throttle(load, 5000);
  return { load, changed: reload };
}

function taskList(root, alive) {
  const q = query();
  const filters = {
    status: q.get("status") || "", agent_name: q.get("agent_name") || "", project: q.get("project") || "",
    workflow_id: q.get("workflow_id") || "", q: q.get("q") || "",
  };
  const positions = [""]; // the `after` of each page seen, to go back
  let page = 0;
  const table = h("div", {}, h("div", { class: "empty" }, "Loading…"));
  const pager = h("div", { class: "pager" });
  const status = h("select", { "aria-label": "Status", name: "status" }, h("option", { value: "" }, "every status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const agent = h("select", { "aria-label": "Agent", name: "agent_name" }, h("option", { value: "" }, "every agent"));
  const project = h("select", { "aria-label": "Project", name: "project" }, h("option", { value: "" }, "every project"));
  const workflow = h("input", { type: "text", placeholder: "workflow id", name: "workflow_id", value: filters.workflow_id, size: 36 });
  const search = h("input", { type: "search", placeholder: "Search task names", name: "q", value: filters.q });
  const apply = () => {
    if (!alive()) return;
    filters.status = status.value; filters.agent_name = agent.value; filters.project = project.value;
    filters.workflow_id = workflow.value.trim(); filters.q = search.value.trim();
    const p = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", BASE + "/tasks" + (p.toString() ? "?" + p : ""));
    positions.length = 1; page = 0;
    load();
  };
  status.onchange = apply; agent.onchange = apply; project.onchange = apply;
  workflow.onchange = apply;
  let typing = null;
  search.oninput = () => { clearTimeout(typing); typing = setTimeout(apply, 250); };
  api("/facets").then((f) => {
    agent.append(...f.agents.map((a) => h("option", { value: a, selected: a === filters.agent_name }, a)));
    project.append(...f.projects.map((p) => h("option", { value: p, selected: p === filters.project }, p.split("/").slice(-2).join("/"))));
  }).catch(() => {});
  fill(root, 
    h("div", { class: "head" }, h("h1", {}, "Tasks"), h("span", { class: "sub", id: "total" })),
    h("div", { class: "filters" }, status, agent, project, workflow, search),
    h("section", { class: "panel" }, table, pager));
  const load = async () => {
    const p = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    if (positions[page]) p.set("after", positions[page]);
    p.set("limit", "50");
    try {
      const r = await api("/tasks?" + p);
      if (!alive()) return;
      document.getElementById("total").textContent = `${r.total.toLocaleString()} matching`;
      table.replaceChildren(r.tasks.length
        ? h("table", { id: "tasks" },
          h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Name"), h("th", {}, "Agent"), h("th", {}, "Created"),
            h("th", { class: "num" }, "Took"), h("th", { class: "num" }, "Attempt"), h("th", {}, "Error"))),
          h("tbody", {}, r.tasks.map((t) => h("tr", { "data-task-id": t.task_id, "data-status": t.status },
            h("td", {}, badge(t.status)), h("td", {}, link("/tasks/" + t.task_id, t.name)), h("td", {}, t.agent_name),
            h("td", {}, when(t.created_at)), h("td", { class: "num" }, t.status === "running" ? since(t.started_at) : ran(t)),
            h("td", { class: "num" }, t.attempt), h("td", { class: "err fill", title: t.error || "" }, t.error || "")))))
        : h("div", { class: "empty" }, "No task matches."));
      const first = page * 50 + 1;
      pager.replaceChildren(
        h("span", {}, r.tasks.length ? `${first.toLocaleString()}–${(first + r.tasks.length - 1).toLocaleString()} of ${r.total.toLocaleString()}` : ""),
        h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; load(); } }, "← Newer"),
        h("button", { type: "button", disabled: !r.next, onclick: () => { positions[page + 1] = r.next; page += 1; load(); } }, "Older →"));
    } catch (e) { failure(table, e); }
  };
  return { load, changed: throttle(load, 1500) };
}

function taskPage(root, id, alive) {
  let task = null;
  let first = true;
  let lastSeq = 0;
  let shown = 0;
  const log = h("div", { class: "log mono", id: "log" });
  const diffBox = h("div", {});
  const seen = new Set();
  const addLines = (lines) => {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    for (const l of lines) {
      if (seen.has(l.seq)) continue;
      seen.add(l.seq);
      const el = h("div", { class: "line", "data-level": l.level, "data-seq": l.seq },
        h("span", { class: "seq" }, l.seq), h("span", { class: "ts" }, new Date(l.ts).toLocaleTimeString()), h("span", { class: "msg" }, l.message));
      if (l.seq > lastSeq) {
        log.append(el);
        lastSeq = l.seq;
      } else {
        // A line that arrived late (the page's first read and the feed overlap): in its place.
        let next = null;
        for (const other of log.querySelectorAll(".line")) if (Number(other.dataset.seq) > l.seq) { next = other; break; }
        log.insertBefore(el, next);
      }
      shown += 1;
    }
    while (shown > MAX_LOG_LINES) {
      const oldest = log.querySelector(".line");
      if (!oldest) break;
      oldest.remove();
      shown -= 1;
      if (!log.querySelector(".note.cut")) log.prepend(h("div", { class: "note cut" }, `Only the last ${MAX_LOG_LINES} lines are shown.`));
    }
    if (seen.size > 4 * MAX_LOG_LINES) {
      // Forget what scrolled out, keeping the set as bounded as the lines.
      for (const s of [...seen].sort((a, b) => a - b).slice(0, seen.size - MAX_LOG_LINES)) seen.delete(s);
    }
    const none = log.querySelector(".note.none");
    if (shown === 0 && !none) log.append(h("div", { class: "note none" }, "No log lines yet."));
    else if (shown > 0 && none) none.remove();
    if (atEnd) log.scrollTop = log.scrollHeight;
  };
  const doAct = async (what, btn) => {
    btn.disabled = true;
    try {
      const t = await act(`/tasks/${id}/${what}`);
      toast(`${what === "cancel" ? "Cancelled" : "Retrying"}: ${t.name} is ${t.status}`);
      await load();
    } catch (e) { toast(e.message, true); btn.disabled = false; }
  };
  const showDiff = async () => {
    loading(diffBox);
    try {
      const d = await api(`/tasks/${id}/diff`);
      const pre = h("pre", { class: "diff mono" });
      for (const line of (d.diff || "").split("\n")) {
        const cls = line.startsWith("+++") || line.startsWith("---") ? "" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
        pre.append(h("span", { class: cls }, line + "\n"));
      }
      diffBox.replaceChildren(
        h("p", { class: "muted" }, `${d.files.length} file(s) changed` + (d.truncated ? " — cut; the CLI's `diff` shows all of it" : "")),
        d.diff ? pre : h("div", { class: "empty" }, "No changes."));
    } catch (e) { failure(diffBox, e); }
  };
  const load = async () => {
    try {
      task = await api("/tasks/" + id);
      if (!alive()) return;
      const t = task;
      const stick = first || log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      if (first) {
        addLines(t.logs);
        if (t.logs_cut) log.prepend(h("div", { class: "note" }, "Earlier lines are not shown (the CLI's `logs` command has them all)."));
      }
      const canCancel = t.status === "pending" || t.status === "running";
      // A workflow's tasks are not retried one by one (the tools refuse it too).
      const canRetry = (t.status === "failed" || t.status === "cancelled") && !t.workflow_id;
      const u = t.usage || {};
      const ws = t.workspace;
      // While it runs, its log comes first; once it ended, its result does.
      const live = t.status === "running" || t.status === "pending";
      const logPanel = h("section", { class: "panel" }, h("h2", {}, "Log"), log);
      const field = (k, v) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? h("span", { class: "muted" }, "—") : v)];
      fill(root, 
        h("div", { class: "head" },
          h("h1", { id: "task-name" }, t.name), h("span", { id: "task-status" }, badge(t.status)),
          h("span", { class: "spacer" }),
          canCancel ? h("button", { class: "danger", id: "cancel", type: "button", onclick: (e) => doAct("cancel", e.target) }, "Cancel") : null,
          canRetry ? h("button", { class: "primary", id: "retry", type: "button", onclick: (e) => doAct("retry", e.target) }, "Retry") : null),
        t.error ? h("section", { class: "panel" }, h("h2", {}, "Error"), h("pre", { class: "error", id: "task-error" }, t.error)) : null,
        live ? logPanel : null,
        h("div", { class: "grid two" },
          h("section", { class: "panel" }, h("h2", {}, "Task"),
            h("dl", { class: "fields" },
              field("id", h("span", { class: "mono" }, t.task_id)),
              field("agent", link("/tasks?agent_name=" + encodeURIComponent(t.agent_name), t.agent_name)),
              field("priority", t.priority),
              field("created", when(t.created_at)),
              field("scheduled", t.scheduled_at !== t.created_at ? when(t.scheduled_at) : null),
              field("started", when(t.started_at)),
              field("finished", t.completed_at ? when(t.completed_at) : null),
              field("took", t.status === "running" ? since(t.started_at) : ran(t)),
              field("attempt", `${t.attempt} (retries allowed: ${t.max_retries})`),
              field("timeout", duration(t.timeout_seconds * 1000)),
              field("project", t.project ? h("span", { class: "mono" }, t.project) : null),
              field("workflow", t.workflow_id ? link("/workflows/" + t.workflow_id, t.phase_id ? `phase ${t.phase_id}` : t.workflow_id) : null),
              field("depends on", t.dependencies.length ? h("span", {}, t.dependencies.map((d, i) => [i ? ", " : "", link("/tasks/" + d, d.slice(0, 8))])) : null),
              field("webhook", t.webhook_url),
              field("tokens", u.input_tokens !== undefined && u.input_tokens !== null ? `${u.input_tokens.toLocaleString()} in, ${(u.output_tokens || 0).toLocaleString()} out` : null),
              field("cost", u.cost_usd !== undefined && u.cost_usd !== null ? usd(u.cost_usd) : null),
              field("metadata", t.metadata ? h("pre", { class: "mono" }, JSON.stringify(t.metadata, null, 2)) : null))),
          h("section", { class: "panel" }, h("h2", {}, "Result"),
            t.result_html ? h("div", { class: "markdown", id: "result", ...{} }) : h("div", { class: "empty" }, t.status === "completed" ? "No result text." : "No result yet."))),
        ws ? h("section", { class: "panel", id: "workspace" }, h("h2", {}, "Worktree"),
          h("dl", { class: "fields" },
            field("branch", ws.branch ? h("code", {}, ws.branch) : "no changes were committed"),
            field("repository", h("span", { class: "mono" }, ws.repository)),
            field("base", h("code", {}, (ws.base_commit || "").slice(0, 12))),
            field("head", ws.head_commit ? h("code", {}, ws.head_commit.slice(0, 12)) : null),
            field("change", `${ws.files_changed} file(s), +${ws.insertions} −${ws.deletions}`)),
          h("p", {}, h("button", { type: "button", onclick: showDiff }, "Show the diff")), diffBox) : null,
        live ? null : logPanel,
        h("section", { class: "panel" }, h("h2", {}, "Instructions"), h("details", {}, h("summary", {}, `${t.instructions.length.toLocaleString()} characters`), h("pre", {}, t.instructions))),
        h("section", { class: "panel" }, h("h2", {}, "Webhook deliveries"),
          t.deliveries.length
            ? h("table", { id: "deliveries" }, h("thead", {}, h("tr", {}, h("th", {}, "Event"), h("th", { class: "num" }, "Attempt"), h("th", {}, "Answer"), h("th", { class: "num" }, "Took"), h("th", {}, "When"), h("th", {}, "URL"))),
              h("tbody", {}, t.deliveries.map((d) => h("tr", {},
                h("td", {}, d.event_type), h("td", { class: "num" }, d.attempt),
                h("td", { class: d.status_code && d.status_code < 300 ? "" : "err" }, d.status_code ? String(d.status_code) : d.error || "no answer"),
                h("td", { class: "num" }, d.duration_ms + " ms"), h("td", {}, when(d.delivered_at)), h("td", { class: "mono" }, d.url)))))
            : h("div", { class: "empty" }, t.webhook_url ? "No delivery yet." : "This task has no webhook.")),
      );
      // The result is Markdown made safe by the engine (raw HTML shown as text, safe links only).
      if (t.result_html) document.getElementById("result").innerHTML = t.result_html;
      if (stick) log.scrollTop = log.scrollHeight;
      const wasFirst = first;
      first = false;
      follow(id);
      // Lines the feed did not bring: written before it started, or while it was behind.
      for (let page = 0; ; page++) {
        const more = await api(`/tasks/${id}/logs?after_seq=${lastSeq}&limit=1000`);
        if (!alive()) return;
        addLines(more.logs);
        if (more.logs.length < 1000) break;
        if (page === 9) {
          // Too far behind to page through: jump to the latest lines.
          log.append(h("div", { class: "note" }, "Lines were skipped here."));
          addLines(t.logs);
          break;
        }
      }
      if (wasFirst) log.scrollTop = log.scrollHeight;
    } catch (e) { failure(root, e); }
  };
  const reload = throttle(load, 700);
  return {
    load,
    changed: (c) => { if (c.more || (c.tasks && c.tasks[id]) || (c.deliveries || []).includes(id)) reload(); },
    log: (lines) => { if (alive()) addLines(lines); },
  };
}

function workflowList(root, alive) {
  const status = query().get("status") || "";
  const sel = h("select", { "aria-label": "Status" }, h("option", { value: "" }, "every status"),
    ["draft", "running", "completed", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === status }, s)));
  const body = h("div", {}, h("div", { class: "empty" }, "Loading…"));
  const pager = h("div", { class: "pager" });
  const PAGE = 50;
  let offset = 0;
  sel.onchange = () => {
    history.replaceState(null, "", BASE + "/workflows" + (sel.value ? "?status=" + sel.value : ""));
    offset = 0;
    load();
  };
  fill(root, h("div", { class: "head" }, h("h1", {}, "Workflows")), h("div", { class: "filters" }, sel), h("section", { class: "panel" }, body, pager));
  const load = async () => {
    try {
      // One more than a page, to know whether there is an older one.
      const r = await api(`/workflows?limit=${PAGE + 1}&offset=${offset}` + (sel.value ? "&status=" + sel.value : ""));
      if (!alive()) return;
      const more = r.workflows.length > PAGE;
      const shown = r.workflows.slice(0, PAGE);
      body.replaceChildren(shown.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Name"), h("th", {}, "Progress"), h("th", { class: "num" }, "Tasks"), h("th", {}, "Created"))),
          h("tbody", {}, shown.map((w) => h("tr", { "data-workflow-id": w.workflow_id },
            h("td", {}, badge(w.status)), h("td", {}, link("/workflows/" + w.workflow_id, w.name)),
            h("td", {}, h("div", { class: "bar", title: w.progress + "%" }, h("span", { style: `width:${w.progress}%` }))),
            h("td", { class: "num" }, `${w.tasks_completed} / ${w.tasks_total}`), h("td", {}, when(w.created_at))))))
        : h("div", { class: "empty" }, offset ? "No older workflow." : "No workflow yet."));
      pager.replaceChildren(
        h("button", { type: "button", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "← Newer"),
        h("button", { type: "button", disabled: !more, onclick: () => { offset += PAGE; load(); } }, "Older →"));
    } catch (e) { failure(body, e); }
  };
  return { load, changed: throttle(load, 1500) };
}

// Phases in columns by depth (a phase sits right of every phase it depends on), their tasks
// as boxes coloured by status, and an edge from each phase to each phase that waits for it.
function picture(w) {
  const depth = {};
  for (const p of w.phases) depth[p.phase_id] = Math.max(0, ...p.depends_on.map((d) => (depth[d] ?? 0) + 1));
  const cols = [];
  for (const p of w.phases) (cols[depth[p.phase_id]] ||= []).push(p);
  const tasksOf = {};
  for (const t of w.tasks) (tasksOf[t.phase_id] ||= []).push(t);
  const cards = {};
  const box = h("div", { class: "picture", id: "picture" });
  const colEls = h("div", { class: "cols" }, cols.map((ps) => h("div", { class: "col" }, ps.map((p) => {
    const ts = tasksOf[p.phase_id] || [];
    const card = h("div", { class: "phase", "data-phase-id": p.phase_id, "data-status": p.status },
      h("div", { class: "ph" }, h("b", {}, p.name), h("span", { class: "muted" }, `${p.status} · ${p.tasks_completed}/${p.tasks_total}`)),
      ts.length ? ts.map((t) => h("a", { class: "box", href: `${BASE}/tasks/${t.task_id}`, "data-task-id": t.task_id, "data-status": t.status, title: `${t.name} — ${t.status}` + (t.branch ? ` — ${t.branch}` : "") }, t.name))
        : h("div", { class: "muted" }, "no tasks"));
    cards[p.phase_id] = card;
    return card;
  }))));
  const edges = svg("svg", { class: "edges" });
  box.append(edges, colEls);
  const draw = () => {
    const origin = box.getBoundingClientRect();
    edges.replaceChildren();
    for (const p of w.phases) for (const d of p.depends_on) {
      const a = cards[d]?.getBoundingClientRect(), b = cards[p.phase_id]?.getBoundingClientRect();
      if (!a || !b) continue;
      const x1 = a.right - origin.left + box.scrollLeft, y1 = a.top + Math.min(a.height / 2, 40) - origin.top;
      const x2 = b.left - origin.left + box.scrollLeft, y2 = b.top + Math.min(b.height / 2, 40) - origin.top;
      const mx = (x1 + x2) / 2;
      edges.append(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 2},${y2}`, "data-from": d, "data-to": p.phase_id }));
    }
  };
  return { el: box, draw };
}

function workflowPage(root, id, alive) {
  let pic = null;
  const onResize = () => pic && pic.draw();
  window.addEventListener("resize", onResize);
  const load = async () => {
    try {
      const w = await api("/workflows/" + id);
      if (!alive()) return;
      pic = picture(w);
      const canCancel = w.status === "running" || w.status === "draft";
      fill(root, 
        h("div", { class: "head" }, h("h1", {}, w.name), h("span", { id: "workflow-status" }, badge(w.status)),
          h("span", { class: "sub" }, `${w.progress}% · ${w.tasks.filter((t) => t.status === "completed").length} of ${w.tasks.length} tasks completed`),
          h("span", { class: "spacer" }),
          link("/tasks?workflow_id=" + id, "its tasks as a list"),
          canCancel ? h("button", { class: "danger", type: "button", onclick: async (e) => {
            e.target.disabled = true;
            try { await act(`/workflows/${id}/cancel`); toast("Workflow cancelled"); load(); } catch (err) { toast(err.message, true); e.target.disabled = false; }
          } }, "Cancel workflow") : null),
        h("div", { class: "bar", style: "margin-bottom:16px;height:10px" }, h("span", { style: `width:${w.progress}%` })),
        w.description ? h("p", { class: "muted" }, w.description) : null,
        w.error ? h("section", { class: "panel" }, h("pre", { class: "error" }, w.error)) : null,
        h("section", { class: "panel" }, h("h2", {}, "Phases"), w.phases.length ? pic.el : h("div", { class: "empty" }, "No phases yet.")),
        w.failed_tasks.length ? h("section", { class: "panel" }, h("h2", {}, "Failed tasks"),
          h("table", {}, h("tbody", {}, w.failed_tasks.map((f) => h("tr", {}, h("td", {}, link("/tasks/" + f.task_id, f.name)), h("td", { class: "err", title: f.error || "" }, f.error || "")))))) : null);
      requestAnimationFrame(() => pic.draw());
    } catch (e) { failure(root, e); }
  };
  return {
    load,
    changed: (() => {
      const reload = throttle(() => load(), 1000);
      return (c) => { if (c.more || (c.workflows || []).includes(id)) reload(); };
    })(),
    stop: () => window.removeEventListener("resize", onResize),
  };
}

function agents(root, alive) {
  const load = async () => {
    try {
      const r = await api("/agents");
      if (!alive()) return;
      const row = (a) => h("tr", { "data-agent": a.name },
        h("td", {}, link("/tasks?agent_name=" + encodeURIComponent(a.name), a.name), a.description ? h("div", { class: "muted" }, a.description) : null),
        h("td", {}, a.runner || "—"), h("td", {}, a.model || h("span", { class: "muted" }, "default")),
        h("td", {}, a.success_rate === null || a.success_rate === undefined ? h("span", { class: "muted" }, "—")
          : h("div", { title: `${a.completed} of ${a.ended} ended tasks completed` }, h("div", { class: "bar" }, h("span", { style: `width:${Math.round(a.success_rate * 100)}%` })), `${Math.round(a.success_rate * 100)}%`)),
        h("td", { class: "num" }, a.ended), h("td", { class: "num" }, a.failed), h("td", { class: "num" }, a.cost_usd ? usd(a.cost_usd) : h("span", { class: "muted" }, "—")),
        h("td", {}, when(a.last_task_at)), h("td", { class: "mono muted" }, a.path || "file not found"));
      const head = h("thead", {}, h("tr", {}, h("th", {}, "Agent"), h("th", {}, "Runner"), h("th", {}, "Model"), h("th", {}, "Success, 7 days"),
        h("th", { class: "num" }, "Ended"), h("th", { class: "num" }, "Failed"), h("th", { class: "num" }, "Cost"), h("th", {}, "Last task"), h("th", {}, "File")));
      fill(root, 
        h("div", { class: "head" }, h("h1", {}, "Agents"), h("span", { class: "sub" }, "as the engine finds them on its search path")),
        h("section", { class: "panel" }, r.agents.length ? h("table", { id: "agents" }, head, h("tbody", {}, r.agents.map(row))) : h("div", { class: "empty" }, "No agent files found.")),
        r.unlisted.length ? h("section", { class: "panel" }, h("h2", {}, "Agents with tasks but no file here"),
          h("table", {}, head.cloneNode(true), h("tbody", {}, r.unlisted.map(row)))) : null);
    } catch (e) { failure(root, e); }
  };
  return { load, changed: throttle(load, 5000) };
}

// ---- routing -----------------------------------------------------------------------------

function route() {
  if (view && view.stop) view.stop();
  gen += 1;
  const mine = gen;
  const alive = () => mine === gen;
  const root = document.getElementById("view");
  loading(root);
  const path = location.pathname.replace(/^\/dashboard/, "").replace(/\/+$/, "") || "/";
  const parts = path.split("/").filter(Boolean);
  let nav = "overview", task = null;
  const isId = (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s || "");
  if (parts.length > 2 || (parts[1] && !isId(parts[1])) || (parts[0] && !["tasks", "workflows", "agents"].includes(parts[0]))) {
    view = { load: () => fill(root, h("div", { class: "panel" }, h("h1", {}, "Not found"), h("p", {}, "Nothing is at ", h("code", {}, location.pathname), ". ", link("/", "Back to the overview")))) };
  }
  else if (parts[0] === "tasks" && parts[1]) { view = taskPage(root, parts[1], alive); nav = "tasks"; task = parts[1]; }
  else if (parts[0] === "tasks") { view = taskList(root, alive); nav = "tasks"; }
  else if (parts[0] === "workflows" && parts[1]) { view = workflowPage(root, parts[1], alive); nav = "workflows"; }
  else if (parts[0] === "workflows") { view = workflowList(root, alive); nav = "workflows"; }
  else if (parts[0] === "agents") { view = agents(root, alive); nav = "agents"; }
  else { view = overview(root, alive); }
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === nav);
  const title = { overview: "Overview", tasks: task ? "Task" : "Tasks", workflows: "Workflows", agents: "Agents" }[nav];
  document.title = `${title} · orchestr8`;
  // The open feed when it is the right one (loading now), else a new one (loading at `ready`).
  if (feed && feedTask === task && feed.readyState === EventSource.OPEN) view.load();
  else follow(task);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a[href]");
  // Links in a rendered result are the agent's, not the dashboard's: the browser follows them.
  if (a && a.closest(".markdown")) return;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE)) return;
  e.preventDefault();
  history.pushState(null, "", url.pathname + url.search);
  route();
});
window.addEventListener("popstate", route);

// Counting durations and ages tick once a second, without reloading anything.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-since]")) {
    const t = ms(el.dataset.since);
    if (t) el.textContent = duration(Date.now() - t);
  }
  for (const el of document.querySelectorAll("[data-ago]")) el.textContent = ago(el.dataset.ago);
}, 1000);

// Charts cover moving windows (the last 24 hours...): a page left open reloads now and then
// even when nothing changes.
setInterval(() => {
  if (view && document.visibilityState === "visible" && feed && feed.readyState === EventSource.OPEN) view.load();
}, 60000);

function theme() {
  const btn = document.getElementById("theme");
  const apply = (t) => {
    if (t === "auto") delete document.documentElement.dataset.theme; else document.documentElement.dataset.theme = t;
    btn.textContent = "Theme: " + t;
  };
  let t = localStorage.getItem("orchestr8-theme") || "auto";
  apply(t);
  btn.onclick = () => {
    t = { auto: "light", light: "dark", dark: "auto" }[t] || "auto";
    localStorage.setItem("orchestr8-theme", t);
    apply(t);
  };
}

// The page key arrives once, in the fragment of the address the sign-in redirects to; it is
// kept in this origin's localStorage (which, unlike a cookie, no other port can read).
function takeKey() {
  const m = location.hash.match(/^#k=([0-9a-f]+)$/);
  if (m) {
    localStorage.setItem("orchestr8-key", m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
  key = localStorage.getItem("orchestr8-key") || "";
}

async function start() {
  theme();
  takeKey();
  try {
    await api("/session");
  } catch (e) {
    signedOut(e.message);
    return;
  }
  route();
}

start();
