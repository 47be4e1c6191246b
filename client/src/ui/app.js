// The trainerd page: the jobs table, a job's page (chart, events, logs, checkpoints, buttons) and
// health. Every call goes to trainctl's own /api (which asks trainerd over its unix socket); every
// JSON shape is the one `trainctl --json` prints. No framework: a few DOM helpers.
"use strict";

const main = document.getElementById("main");
const errorBox = document.getElementById("error");
let stopPage = () => {};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function api(path, method) {
  const res = await fetch("/api/" + path, { method: method || "GET", credentials: "same-origin" });
  const body = await res.json().catch(() => ({ ok: false, error: { message: res.statusText } }));
  if (!body.ok) throw new Error(body.error ? body.error.message : "request failed");
  return body;
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(3);
  return v.toFixed(digits === undefined ? 4 : digits);
}

function age(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return Math.round(s) + "s";
  if (s < 3600) return Math.round(s / 60) + "m";
  if (s < 86400) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}

function stateCell(state) {
  return el("span", { class: "state " + state }, state);
}

// ---- the jobs table -------------------------------------------------------------------------------

const STATES = ["", "queued", "starting", "running", "pausing", "paused", "stopping", "backoff", "completed", "failed", "cancelled"];

function jobsPage() {
  const state = el("select", { id: "filter-state" }, STATES.map((s) => el("option", { value: s }, s || "any state")));
  const name = el("input", { id: "filter-name", placeholder: "name", size: 16 });
  const body = el("tbody");
  const more = el("button", { id: "next-page", hidden: true }, "Next page");
  let page = "";
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["ID", "NAME", "STATE", "STEP", "EPOCH", "LOSS", "RESTARTS", "AGE", "GPUS", "WAITING FOR"].map((h) => el("th", {}, h)))),
    body);
  main.replaceChildren(el("div", { class: "filters" }, state, name), table, more);
  async function refresh() {
    const q = new URLSearchParams({ limit: "100" });
    if (state.value) q.set("state", state.value);
    if (name.value) q.set("name", name.value);
    if (page) q.set("page", page);
    try {
      const r = await api("jobs?" + q);
      showError("");
      body.replaceChildren(...r.jobs.map((j) => el("tr", { "data-id": j.id, "data-state": j.state, "data-step": j.step },
        el("td", {}, el("a", { href: "#/job/" + j.id }, j.id)),
        el("td", {}, j.name),
        el("td", {}, stateCell(j.state)),
        el("td", { class: "num" }, j.total_steps ? `${j.step}/${j.total_steps}` : j.step),
        el("td", { class: "num" }, j.epoch),
        el("td", { class: "num" }, fmt(j.loss)),
        el("td", { class: "num" }, j.restarts),
        el("td", { class: "num" }, age(j.created_at)),
        el("td", {}, (j.gpus || []).join(",")),
        el("td", { class: "muted" }, j.waiting_for || ""))));
      more.hidden = !r.next_page;
      more.onclick = () => { page = r.next_page; refresh(); };
    } catch (e) {
      showError(e.message);
    }
  }
  state.onchange = name.oninput = () => { page = ""; refresh(); };
  refresh();
  const timer = setInterval(refresh, 1000);
  return () => clearInterval(timer);
}

// ---- a job ----------------------------------------------------------------------------------------

function jobPage(id) {
  const head = el("div", { class: "job-head" });
  const facts = el("div", { class: "facts" });
  const buttons = el("div", { class: "buttons" });
  const metricSelect = el("select", { id: "metric" });
  const logScale = el("input", { type: "checkbox", id: "log-scale" });
  const fromStep = el("input", { id: "from-step", type: "number", min: 0, placeholder: "from step", size: 8 });
  const toStep = el("input", { id: "to-step", type: "number", min: 0, placeholder: "to step", size: 8 });
  const chartBox = el("div", { id: "chart", "data-points": "0" });
  const events = el("ul", { class: "events", id: "events" });
  const checkpoints = el("ul", { class: "events", id: "checkpoints" });
  const logs = el("pre", { class: "logs", id: "logs" });
  main.replaceChildren(head, buttons, facts,
    el("div", { class: "panel" }, el("h2", {}, "Metrics"),
      el("div", { class: "chart-controls" }, "with", metricSelect, el("label", {}, logScale, " log scale"), fromStep, toStep,
        el("span", { class: "muted" }, "drag on the chart to zoom; double-click to reset")),
      chartBox),
    el("div", { class: "panel" }, el("h2", {}, "Events"), events),
    el("div", { class: "panel" }, el("h2", {}, "Checkpoints"), checkpoints),
    el("div", { class: "panel" }, el("h2", {}, "Logs"), logs));

  let job = null;
  let series = {}; // name -> [{step, value, attempt}]
  let plot = null;

  function act(verb, question) {
    return el("button", { id: verb, onclick: async () => {
      if (!confirm(question)) return;
      try {
        const r = await api(`${verb}?id=${id}`, "POST");
        showError("");
        showJob(r.job);
        refreshSide();
      } catch (e) {
        showError(`${verb}: ${e.message}`);
      }
    } }, verb[0].toUpperCase() + verb.slice(1));
  }
  buttons.replaceChildren(
    act("pause", "Pause this job at the end of its epoch?"),
    act("resume", "Resume this job from its pause checkpoint?"),
    act("cancel", "Cancel this job (its processes are stopped)?"),
    act("retry", "Retry this job from its latest checkpoint?"));

  function showJob(j) {
    job = j;
    head.replaceChildren(el("h1", {}, `${j.name} `, el("span", { class: "muted" }, j.id)), stateCell(j.state),
      el("span", { id: "job-state", "data-state": j.state, hidden: true }));
    const f = (label, value) => el("div", {}, el("span", {}, label), value ?? "");
    facts.replaceChildren(
      f("step", j.total_steps ? `${j.step}/${j.total_steps}` : j.step),
      f("epoch", j.epoch), f("loss", fmt(j.loss)), f("val_loss", fmt(j.val_loss)),
      f("attempt", j.attempt), f("restarts", j.restarts), f("rollbacks", j.rollbacks),
      f("reason", j.reason), f("executor", j.executor), f("pid", j.pid),
      f("waiting for", j.waiting_for), f("resumed from", j.resumed_from), f("message", j.message));
    const s = j.state;
    document.getElementById("pause").disabled = !["queued", "starting", "running", "backoff"].includes(s);
    document.getElementById("resume").disabled = s !== "paused";
    document.getElementById("cancel").disabled = ["completed", "failed", "cancelled"].includes(s);
    document.getElementById("retry").disabled = !["failed", "cancelled"].includes(s);
  }

  function chosen() {
    const names = ["loss", "val_loss"].filter((n) => series[n]);
    if (metricSelect.value && !names.includes(metricSelect.value)) names.push(metricSelect.value);
    return names;
  }

  function draw() {
    const names = chosen();
    const steps = [...new Set(names.flatMap((n) => series[n].map((p) => p.step)))].sort((a, b) => a - b);
    const lo = fromStep.value === "" ? -Infinity : Number(fromStep.value);
    const hi = toStep.value === "" ? Infinity : Number(toStep.value);
    const xs = steps.filter((s) => s >= lo && s <= hi);
    const columns = names.map((n) => {
      const at = new Map(series[n].map((p) => [p.step, p.value]));
      return xs.map((s) => (at.has(s) && Number.isFinite(at.get(s)) ? at.get(s) : null));
    });
    chartBox.setAttribute("data-points", String(series.loss ? series.loss.filter((p) => p.step >= lo && p.step <= hi).length : 0));
    // Where a later attempt took over: a dashed line at its first step.
    const marks = [];
    const loss = series.loss || [];
    for (let i = 1; i < loss.length; i++) if (loss[i].attempt > loss[i - 1].attempt && loss[i - 1].attempt > 0) marks.push([loss[i].step, loss[i].attempt]);
    chartBox.setAttribute("data-attempt-marks", String(marks.length));
    const colors = ["#2f6fde", "#e67e22", "#1e8e3e", "#8e44ad"];
    const opts = {
      width: Math.max(320, chartBox.clientWidth || 800), height: 280,
      scales: { x: { time: false }, y: { distr: logScale.checked ? 3 : 1 } },
      series: [{ label: "step" }, ...names.map((n, i) => ({ label: n, stroke: colors[i % colors.length], width: 1.5, spanGaps: true }))],
      axes: [{ label: "step" }, {}],
      hooks: { draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = "#c0392b";
        ctx.setLineDash([4, 4]);
        for (const [step] of marks) {
          const x = u.valToPos(step, "x", true);
          ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        }
        ctx.restore();
      }] },
    };
    if (plot) plot.destroy();
    const began = performance.now();
    plot = new uPlot(opts, [xs, ...columns], chartBox);
    // For the benchmark: how long the chart took to draw, and when it was first drawn after the page
    // began loading.
    chartBox.dataset.renderMs = (performance.now() - began).toFixed(2);
    if (!chartBox.dataset.loadedMs) chartBox.dataset.loadedMs = performance.now().toFixed(1);
  }

  async function loadMetrics() {
    try {
      const m = await api(`metrics?id=${id}&max_points=2000`);
      series = {};
      for (const [name, samples] of Object.entries(m.series)) {
        series[name] = samples.map((p) => ({ step: p.step, value: typeof p.value === "string" ? NaN : p.value, attempt: p.attempt }));
      }
      const keep = metricSelect.value;
      metricSelect.replaceChildren(el("option", { value: "" }, "(loss only)"),
        ...m.names.filter((n) => n !== "loss" && n !== "val_loss").map((n) => el("option", { value: n }, n)));
      metricSelect.value = keep;
      draw();
    } catch (e) {
      showError(e.message);
    }
  }

  async function refreshSide() {
    try {
      const ev = await api(`events?id=${id}`);
      events.replaceChildren(...ev.events.map((e) => el("li", {},
        el("time", {}, new Date(e.at * 1000).toLocaleString()), el("span", { class: "kind" }, e.kind), e.message)));
      checkpoints.replaceChildren(...ev.events.filter((e) => e.kind === "checkpoint").map((e) => el("li", {}, e.message)));
      const lg = await api(`logs?id=${id}&tail=16384`);
      logs.textContent = lg.stdout + (lg.stderr ? "\n--- stderr ---\n" + lg.stderr : "");
    } catch (e) {
      showError(e.message);
    }
  }

  metricSelect.onchange = logScale.onchange = fromStep.onchange = toStep.onchange = draw;
  let source = null;
  (async () => {
    try {
      showJob((await api(`job?id=${id}`)).job);
      showError("");
    } catch (e) {
      showError(e.message);
      return;
    }
    await loadMetrics();
    await refreshSide();
    source = new EventSource(`/api/watch?id=${id}`);
    document.body.dataset.watch = "open";
    source.onmessage = (msg) => {
      const u = JSON.parse(msg.data);
      if (u.job) showJob(u.job);
      // A finished job's stream ends with its snapshot: no reconnecting to hear it again.
      if (u.job && ["completed", "failed", "cancelled"].includes(u.job.state)) {
        source.close();
        document.body.dataset.watch = "ended";
      }
      if (u.point) {
        for (const [name, v] of Object.entries(u.point.values)) {
          const list = series[name] || (series[name] = []);
          const value = typeof v === "string" ? NaN : v;
          while (list.length && list[list.length - 1].step >= u.point.step) list.pop();
          list.push({ step: u.point.step, value, attempt: u.point.attempt });
        }
        draw();
      }
      if (u.update === "state") refreshSide();
    };
  })();
  const timer = setInterval(() => { if (job && !["completed", "failed", "cancelled"].includes(job.state)) refreshSide(); }, 3000);
  return () => { clearInterval(timer); if (source) source.close(); if (plot) plot.destroy(); };
}

// ---- health ---------------------------------------------------------------------------------------

function healthPage() {
  (async () => {
    try {
      const h = await api("health");
      showError("");
      const rec = h.last_reconcile || {};
      main.replaceChildren(el("div", { class: "panel", id: "health" },
        el("h2", {}, `Health: ${h.status}`),
        el("div", {}, `divergent records: ${h.divergent}`),
        h.cause ? el("div", {}, `cause: ${h.cause}`) : "",
        el("div", {}, `jobs: ${Object.entries(h.jobs || {}).map(([s, n]) => `${s} ${n}`).join(", ")}`),
        el("div", {}, rec.at ? `last reconciliation ${age(rec.at)} ago: ${rec.checked} job(s) checked, ${(rec.fixes || []).length} fix(es)` : "never reconciled"),
        el("ul", {}, (rec.fixes || []).map((f) => el("li", {}, f)))));
    } catch (e) {
      showError(e.message);
    }
  })();
  return () => {};
}

function route() {
  stopPage();
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/job\/([0-9a-f]+)$/);
  stopPage = job ? jobPage(job[1]) : hash === "#/health" ? healthPage() : jobsPage();
}

window.addEventListener("hashchange", route);
route();
