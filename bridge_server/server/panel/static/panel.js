// ACE Bridge control panel: renders the daemon's state and pushes the user's actions back as JSON.
// No framework and no build step. Everything the daemon sends is inserted with textContent, never as HTML.
"use strict";

const PAGE = 60;
const view = { offset: 0, total: 0, version: -1, paused: false, first: true, engine: {}, socketTries: 0,
  targets: [], offers: [] };
window.panelTimings = { start: performance.now() };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) throw new Error((data && data.message) || `${response.status} ${response.statusText}`);
  return data;
}

function toast(text) {
  const node = $("toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, 2500);
}

function fmtTime(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const today = new Date();
  const same = d.toDateString() === today.toDateString();
  return same ? d.toLocaleTimeString() : d.toLocaleString();
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// Two clicks for destructive actions: the first arms the button for three seconds.
function armed(button, label, action) {
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.dataset.label = button.textContent;
      button.textContent = label;
      button.classList.add("armed");
      setTimeout(() => { button.classList.remove("armed"); button.textContent = button.dataset.label; }, 3000);
      return;
    }
    button.classList.remove("armed");
    button.textContent = button.dataset.label;
    await action();
  });
}

// ------------------------------------------------------------------------------------------------ engine

function renderEngine(engine) {
  view.engine = engine;
  const state = engine.state || "unknown";
  const badge = $("engine-badge");
  badge.textContent = engine.usable === false ? "cannot run" : state;
  badge.className = `badge ${state}`;
  // A machine where the model cannot run is shown as such, with what to do, not as a healthy idle engine.
  const problem = $("engine-problem");
  problem.hidden = engine.usable !== false;
  problem.replaceChildren(...(engine.usable === false ? [
    el("strong", {}, "The model cannot run on this machine"),
    el("div", { class: "error" }, engine.error || ""),
    el("div", { class: "advice" }, engine.advice || ""),
  ] : []));
  const info = $("engine-info");
  info.replaceChildren();
  const rows = [
    ["State", state + (engine.tiny ? " (tiny test model)" : "")],
    ["Model", engine.model || ""],
    ["Adapters", (engine.adapters || []).join(", ") || "none loaded"],
    ["FFT (instruct)", engine.fft ? (engine.fft_loaded ? "loaded" : "available") : "not installed"],
    ["Device", engine.device || "not chosen yet"],
    ["Memory mode", engine.memory_mode || ""],
    ["Tier", engine.tier ? `${engine.tier} (${engine.weights || ""}): ${engine.tier_reason || ""}`
      : `${engine.tier_requested || "auto"} (chosen when the model loads)`],
    ["VRAM", engine.vram ? `${engine.vram.free_gib} GiB free of ${engine.vram.total_gib} GiB` : "no GPU"],
    ["Tasks", (engine.tasks || []).join(", ")],
  ];
  if (engine.download) {
    const d = engine.download;
    const pct = d.total_bytes ? ` (${Math.floor((100 * d.done_bytes) / d.total_bytes)} %)` : "";
    rows.push(["Download", `${d.file || "model files"}: ${(d.done_bytes / 1e9).toFixed(2)} of ` +
      `${(d.total_bytes / 1e9).toFixed(2)} GB${pct}`]);
  }
  for (const r of engine.replicas || []) {  // serve --ray: one row per engine replica (docs/scaling.md)
    const busy = r.state === "ready" ? (r.busy ? ", busy" : ", idle") : "";
    rows.push([`Replica ${r.replica}`, `${r.state}${busy} · ${r.gpu || "?"} on ${r.node || "?"} · tier ${r.tier || "-"}`
      + ` · adapters ${(r.adapters || []).join(", ") || "none"} · ${r.jobs_done || 0} done`
      + ` · ${(r.failures || 0) + (r.lost || 0)} failures${r.note ? " · " + r.note : ""}`]);
  }
  for (const p of engine.people || []) {
    rows.push([`Person ${p.person}`, `${p.queued} queued · ${p.running} running · ${p.done} done, ${p.failed} failed,`
      + ` ${p.cancelled} cancelled (not yet collected)`]);
  }
  if (engine.error) rows.push(["Error", engine.error]);
  for (const [key, value] of rows) info.append(el("dt", {}, key), el("dd", {}, value));
  const command = $("engine-command");
  command.hidden = !engine.command;
  command.textContent = engine.command ? `Model files are missing. Run: ${engine.command}` : "";
  const warnings = $("warnings");
  warnings.replaceChildren(...(engine.warnings || []).map((w) => el("li", {}, w)));
  setPaused(Boolean(engine.paused));
  renderSettings(engine.settings);
}

function renderSettings(settings) {
  if (!settings) return;
  const steps = $("default-steps");
  const mode = $("memory-mode");
  if (settings.steps_range) [steps.min, steps.max] = settings.steps_range;  // the task table's range
  if (document.activeElement !== steps) steps.value = settings.default_steps;
  if (mode.options.length !== settings.memory_modes.length) {
    mode.replaceChildren(...settings.memory_modes.map((m) => new Option(m, m)));
  }
  if (document.activeElement !== mode) mode.value = settings.memory_mode;
  const tier = $("tier");
  tier.parentElement.hidden = !(settings.tiers || []).length;  // an engine without tiers (demo, remote replicas)
  if (tier.options.length !== (settings.tiers || []).length) {
    tier.replaceChildren(...settings.tiers.map((t) => new Option(t, t)));
  }
  if (document.activeElement !== tier && settings.tier) tier.value = settings.tier;
}

function setPaused(paused) {
  view.paused = paused;
  const button = $("pause-btn");
  button.textContent = paused ? "Resume queue" : "Pause queue";
  button.classList.toggle("on", paused);
  $("paused-note").hidden = !paused;
}

// ------------------------------------------------------------------------------------------------ clients

function renderClients(clients) {
  $("clients-count").textContent = `(${clients.length})`;
  const list = $("clients");
  if (!clients.length) {
    list.replaceChildren(el("li", { class: "dim" }, "No editor connected."));
    return;
  }
  list.replaceChildren(...clients.map((c) => el("li", { dataset: { client: c.client_id } },
    el("strong", {}, c.editor || c.client_name || c.client_id), " ",
    el("span", { class: "dim" },
      `${c.client_name || ""} ${c.client_version || ""} · since ${fmtTime(c.since)} · pixels via ${c.pixels || "frames"}`))));
}

// ------------------------------------------------------------------------------------------------ queue

function renderQueue(queue) {
  $("queue-count").textContent = `(${queue.length})`;
  $("queue-empty").hidden = queue.length > 0;
  const rows = queue.map((job) => {
    let progress;
    if (job.state === "running") {
      const total = job.total || 0;
      const pct = total ? Math.round((100 * job.step) / total) : 0;
      const eta = job.eta_s !== null && job.eta_s !== undefined ? ` · ETA ${fmtDuration(job.eta_s)}` : "";
      const image = job.count > 1 ? ` · image ${job.image_index + 1}/${job.count}` : "";
      const fill = el("span", { class: "fill" });
      fill.style.width = `${pct}%`; // CSSOM, not a style attribute: the page's CSP allows no inline styles
      progress = el("span", { class: "progress" },
        el("span", { class: "bar" }, fill),
        total ? `step ${job.step}/${total}${eta}${image}` : "starting…");
    } else {
      progress = el("span", { class: "dim" }, `queued · position ${job.position}`);
    }
    const cancel = el("button", { type: "button", class: "btn small danger cancel", dataset: { job: job.job_id } },
      "Cancel");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try { await api("/panel/api/cancel", { job_id: job.job_id }); } catch (err) { toast(err.message); }
    });
    return el("tr", { class: `job ${job.state}`, dataset: { job: job.job_id, state: job.state } },
      el("td", {}, job.state === "running" ? "▶" : String(job.position)),
      el("td", {}, job.client_name || job.editor || job.client_id),
      el("td", {}, job.task),
      el("td", { class: "prompt", title: job.prompt }, job.prompt || el("span", { class: "dim" }, "(no prompt)")),
      el("td", {}, progress),
      el("td", {}, cancel));
  });
  $("queue-rows").replaceChildren(...rows);
}

// ------------------------------------------------------------------------------------------------ history

async function loadHistory() {
  const page = await api(`/panel/api/history?offset=${view.offset}&limit=${PAGE}`);
  if (page.total && view.offset >= page.total) {
    view.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
    return loadHistory();
  }
  renderHistory(page);
  return page;
}

function renderHistory(page) {
  view.total = page.total;
  view.version = page.version;
  $("history-count").textContent = `(${page.total})`;
  $("history-empty").hidden = page.total > 0;
  const pages = Math.max(1, Math.ceil(page.total / PAGE));
  $("page-info").textContent = `page ${Math.floor(view.offset / PAGE) + 1} of ${pages}`;
  $("prev-page").disabled = view.offset === 0;
  $("next-page").disabled = view.offset + PAGE >= page.total;
  const items = page.entries.map(historyItem);
  $("gallery").replaceChildren(...items);
  if (view.first) {
    view.first = false;
    window.panelTimings.firstRender = performance.now();
    const images = [...document.querySelectorAll("#gallery img")];
    Promise.all(images.map((img) => img.decode().catch(() => null))).then(() => {
      window.panelTimings.thumbsLoaded = performance.now();
      document.body.dataset.thumbs = "1";
    });
    document.body.dataset.ready = "1";
  }
}

function historyItem(entry) {
  const img = el("img", { src: `/panel/api/thumb/${entry.entry}`, alt: entry.prompt || entry.task });
  const thumb = el("div", { class: "thumb", title: "open full size" }, img);
  thumb.addEventListener("click", () => openViewer(entry));
  const copy = el("button", { type: "button", class: "btn small copy" }, "Copy parameters");
  copy.addEventListener("click", () => copyParameters(entry));
  const open = el("button", { type: "button", class: "btn small open" }, "Open");
  open.addEventListener("click", () => openViewer(entry));
  const del = el("button", { type: "button", class: "btn small danger delete" }, "Delete");
  armed(del, "Really delete?", async () => {
    try { await api("/panel/api/history/delete", { entry: entry.entry }); await loadHistory(); }
    catch (err) { toast(err.message); }
  });
  const item = el("div", { class: "item", dataset: { entry: entry.entry } },
    thumb,
    el("div", { class: "meta" },
      el("div", {}, el("strong", {}, entry.task), " ", el("span", { class: "dim" }, `seed ${entry.seed}`)),
      el("div", { class: "p", title: entry.prompt }, entry.prompt || el("span", { class: "dim" }, "(no prompt)")),
      el("div", { class: "dim" }, `${fmtTime(entry.finished)} · ${fmtDuration(entry.duration_s)} · ` +
        `${entry.width}×${entry.height}`)),
    el("div", { class: "actions" }, open, copy, del),
    sendRow(entry));
  const offer = view.offers.find((o) => o.entry === entry.entry);
  if (offer) showOffer(item, offer);
  return item;
}

// ------------------------------------------------------------------------------------------------ send to editor

function editorTitle(target) {
  const name = (target.editor || target.client_name || "editor").split(" ")[0];  // "krita 5.2.9" -> Krita
  return name.toLowerCase() === "gimp" ? "GIMP" : name.charAt(0).toUpperCase() + name.slice(1);
}

// One choice per open document an editor reported (or one per editor when it reported none).
function targetChoices() {
  const choices = [];
  for (const t of view.targets) {
    const title = editorTitle(t);
    const docs = t.connected ? (t.documents || []) : [];
    if (docs.length) {
      for (const d of docs) {
        choices.push({ client_id: t.client_id, document: d.key, title,
          label: `${title} · ${d.name}${d.active ? " (active)" : ""}` });
      }
    } else {
      const why = t.connected ? "" : (t.mode === "later" ? " (at its next Fetch Finished Results)" : " (not connected)");
      choices.push({ client_id: t.client_id, document: "", title, label: `${title}${why}` });
    }
  }
  return choices;
}

function fillTargets(select, button) {
  const previous = select.value;
  const choices = targetChoices();
  select.replaceChildren(...choices.map((c, i) => {
    const option = new Option(c.label, JSON.stringify({ client_id: c.client_id, document: c.document }));
    option.dataset.title = c.title;
    option.dataset.client = c.client_id;
    if (i === 0) option.defaultSelected = true;
    return option;
  }));
  if (choices.some((c) => JSON.stringify({ client_id: c.client_id, document: c.document }) === previous)) {
    select.value = previous;
  }
  select.hidden = choices.length === 0;
  button.disabled = choices.length === 0;
  const chosen = select.selectedOptions[0];
  button.textContent = chosen ? `Send to ${chosen.dataset.title}` : "Send to editor";
  button.title = choices.length ? "insert this result as a new layer in the chosen editor"
    : "no editor is connected: open Krita or GIMP with the ACE Bridge plug-in";
}

function sendRow(entry) {
  const select = el("select", { class: "send-to", "aria-label": "send to which editor and document" });
  const button = el("button", { type: "button", class: "btn small send" }, "Send to editor");
  const message = el("div", { class: "send-msg", role: "status" });
  select.addEventListener("change", () => fillTargets(select, button));
  button.addEventListener("click", async () => {
    if (!select.value) return;
    const target = JSON.parse(select.value);
    button.disabled = true;
    message.className = "send-msg";
    try {
      const reply = await api("/panel/api/send", { entry: entry.entry, ...target });
      message.textContent = reply.message;
      message.closest(".item").dataset.offer = reply.offer.state;
      message.dataset.offerId = reply.offer.offer_id;
    } catch (err) {
      message.textContent = err.message;
      message.className = "send-msg bad";
      message.closest(".item").dataset.offer = "refused";
    } finally {
      button.disabled = false;
    }
  });
  fillTargets(select, button);
  return el("div", { class: "send-row" }, select, button, message);
}

function showOffer(item, offer) {
  const message = item.querySelector(".send-msg");
  if (!message || (message.dataset.offerId && message.dataset.offerId !== offer.offer_id && offer.state === "sent")) {
    return;
  }
  const title = editorTitle(offer);
  const texts = {
    sent: `Sent to ${title}…`,
    kept: `Kept for ${title}: it inserts it at its next Fetch Finished Results.`,
    inserted: `Inserted into ${offer.inserted_into || title} (${title}) as a new layer.`,
    failed: `${title} could not insert it: ${offer.message}`,
  };
  message.textContent = texts[offer.state] || offer.state;
  message.className = offer.state === "failed" ? "send-msg bad" : "send-msg";
  message.dataset.offerId = offer.offer_id;
  item.dataset.offer = offer.state;
}

function renderTargets(targets) {
  view.targets = targets;
  for (const row of document.querySelectorAll("#gallery .send-row")) {
    fillTargets(row.querySelector("select"), row.querySelector("button"));
  }
}

function renderOffers(offers) {
  view.offers = offers;  // newest first: the newest offer of each result is the one shown
  const seen = new Set();
  for (const offer of offers) {
    if (seen.has(offer.entry)) continue;
    seen.add(offer.entry);
    const item = document.querySelector(`#gallery .item[data-entry='${offer.entry}']`);
    if (item) showOffer(item, offer);
  }
}

function openViewer(entry) {
  // With the input kept beside the result: a before/after slider (left of the line the input, right the result
  // over it); without it, the result alone.
  const compare = Boolean(entry.before);
  $("viewer-img").hidden = compare;
  $("compare").hidden = !compare;
  $("compare-controls").hidden = !compare;
  if (compare) {
    $("compare-before").src = `/panel/api/before/${entry.entry}`;
    $("compare-after").src = `/panel/api/image/${entry.entry}`;
    $("compare-slider").value = "50";
    setCompare(50);
  } else {
    $("viewer-img").src = `/panel/api/image/${entry.entry}`;
  }
  $("viewer-caption").textContent = `${entry.task} · seed ${entry.seed} · ${entry.prompt}`;
  $("viewer").dataset.entry = entry.entry;
  $("viewer").hidden = false;
}

// "Open in panel" from an editor: /panel/#entry=<job id>-<index> (the fragment survives the code's redirect)
// opens that result's viewer once the panel has loaded.
async function openLinked(entries) {
  const match = /^#entry=([0-9a-f]{32}-\d{1,3})$/.exec(location.hash);
  if (!match) return;
  let entry = entries.find((e) => e.entry === match[1]);
  if (!entry) {
    try {
      const meta = await api(`/panel/api/meta/${match[1]}`);
      const prov = (meta && meta.provenance) || {};
      entry = { entry: match[1], task: prov.task || "", seed: prov.seed, prompt: prov.prompt || "",
        before: Boolean(meta && meta.before) };
    } catch (err) {
      toast(`That result is not in the history any more (${err.message}).`);
      return;
    }
  }
  openViewer(entry);
}

function setCompare(percent) {
  $("compare-after").style.clipPath = `inset(0 0 0 ${percent}%)`;  // CSSOM: the CSP allows no inline styles
  $("compare-line").style.left = `${percent}%`;
  $("compare").dataset.split = String(percent);
}

// ------------------------------------------------------------------------------------------------ failures

function renderFailures(failures) {
  $("failures-card").hidden = !failures.length;
  $("failures-count").textContent = `(${failures.length})`;
  $("failures").replaceChildren(...failures.map((f) => el("li", { dataset: { job: f.job_id, code: f.code } },
    el("div", {}, el("strong", {}, f.task || "job"), " ", el("span", { class: "code" }, f.code), " ",
      el("span", { class: "dim" }, `${fmtTime(f.at)}${f.editor ? " · " + f.editor : ""}`)),
    el("div", { class: "message" }, f.message),
    el("div", { class: "advice" }, `What to do: ${f.advice}`),
    f.prompt ? el("div", { class: "dim p" }, f.prompt) : null)));
}

async function copyParameters(entry) {
  const text = JSON.stringify({ task: entry.task, prompt: entry.prompt, seed: entry.seed, ...entry.params }, null, 1);
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    const area = el("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  document.body.dataset.copied = text;
  toast("Parameters copied");
}

// ------------------------------------------------------------------------------------------------ live updates

function apply(message) {
  if (message.engine) renderEngine(message.engine);
  if (message.clients) renderClients(message.clients);
  if (message.targets) renderTargets(message.targets);
  if (message.offers) renderOffers(message.offers);
  if (message.queue) renderQueue(message.queue);
  if (message.failures) renderFailures(message.failures);
  if (message.history && message.history.version !== view.version) {
    loadHistory().catch((err) => toast(err.message));
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/panel/ws`);
  ws.addEventListener("open", () => {
    view.socketTries = 0;
    $("conn").textContent = "live";
    $("conn").className = "conn live";
    ws.send(JSON.stringify({ type: "hello", agent: navigator.userAgent }));
  });
  ws.addEventListener("message", (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (err) { return; }
    apply(message);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  ws.addEventListener("close", () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "conn";
    view.socketTries += 1;
    const retry = () => setTimeout(connect, Math.min(5000, 250 * 2 ** view.socketTries));
    // A restarted daemon forgets panel sessions: say so instead of retrying forever.
    fetch("/panel/api/state", { cache: "no-store" }).then((response) => {
      if (response.status === 401) {
        $("conn").textContent = "session ended: open the panel again with `ace-bridge panel`";
        return;
      }
      retry();
    }).catch(retry);
  });
}

async function start() {
  $("pause-btn").addEventListener("click", async () => {
    try {
      const reply = await api("/panel/api/pause", { paused: !view.paused });
      setPaused(reply.paused);
    } catch (err) { toast(err.message); }
  });
  armed($("rotate-btn"), "Really rotate?", async () => {
    try { $("settings-msg").textContent = (await api("/panel/api/token/rotate", {})).message; }
    catch (err) { $("settings-msg").textContent = err.message; }
  });
  $("settings-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const reply = await api("/panel/api/settings", {
        default_steps: Number($("default-steps").value), memory_mode: $("memory-mode").value,
        ...($("tier").options.length ? { tier: $("tier").value } : {}) });
      renderSettings(reply.settings);
      $("settings-msg").textContent = "Settings applied.";
    } catch (err) { $("settings-msg").textContent = err.message; }
  });
  $("prev-page").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); loadHistory(); });
  $("next-page").addEventListener("click", () => { view.offset += PAGE; loadHistory(); });
  $("viewer").addEventListener("click", (event) => {
    if (!event.target.closest("#compare, #compare-controls")) $("viewer").hidden = true;
  });
  $("compare-slider").addEventListener("input", (event) => setCompare(Number(event.target.value)));
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") $("viewer").hidden = true; });
  const state = await api("/panel/api/state");
  renderEngine(state.engine);
  renderClients(state.clients);
  view.targets = state.targets || [];
  view.offers = state.offers || [];
  renderQueue(state.queue);
  renderHistory(state.history);
  renderFailures(state.failures || []);
  connect();
  await openLinked(state.history.entries || []);
}

start().catch((err) => {
  document.body.dataset.error = err.message;
  toast(`The panel could not load: ${err.message}`);
});
