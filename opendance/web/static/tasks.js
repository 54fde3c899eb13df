// The live list of the key's tasks: status, the server's progress, time taken, model and mode;
// cancel and delete; for a finished task its video, last frame, download link, JSON and the
// request that made it as code. Rows are updated in place, so a playing video keeps playing.

import { api, ApiError } from "./api.js";
import { h, seconds } from "./dom.js";
import { curl, openaiSdk, pythonClient } from "./snippets.js";

const REQUESTS_STORE = "opendance.requests";
const KEEP_REQUESTS = 200;
const PAGE = 20;

// The requests this browser made, by task id (files by name only: see snippets.js).
function loadRequests() {
  try {
    return JSON.parse(localStorage.getItem(REQUESTS_STORE) || "{}");
  } catch {
    return {};
  }
}

function saveRequest(taskId, described) {
  const all = loadRequests();
  all[taskId] = { at: Date.now(), described };
  const newest = Object.entries(all).sort((a, b) => b[1].at - a[1].at).slice(0, KEEP_REQUESTS);
  try {
    localStorage.setItem(REQUESTS_STORE, JSON.stringify(Object.fromEntries(newest)));
  } catch {
    // storage full: the snippets of this task are lost, nothing else
  }
}

const terminal = (task) => task.status === "completed" || task.status === "failed";

function statusWord(task) {
  if (task.status !== "failed") return task.status.replace("_", " ");
  return { CANCELLED: "cancelled", EXPIRED: "expired" }[task.raw_status] || "failed";
}

function timeTaken(task) {
  const now = Date.now() / 1000;
  if (task.completed_at) return `took ${seconds(task.completed_at - task.created_at)}`;
  if (task.status === "failed") return "";
  return `${task.status === "queued" ? "waiting" : "running"} ${seconds(now - task.created_at)}`;
}

export class TaskList {
  constructor(section, { keyed }) {
    this.section = section;
    this.list = section.querySelector("#task-list");
    this.empty = section.querySelector("#tasks-empty");
    this.more = section.querySelector("#more-tasks");
    this.keyed = keyed;
    this.limit = PAGE;
    this.rows = new Map();
    this.timer = null;
    this.running = false;
    this.more.onclick = () => {
      this.limit = Math.min(100, this.limit + PAGE);
      this.refresh();
    };
  }

  start() {
    this.running = true;
    this.refresh();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.rows.clear();
    this.list.replaceChildren();
  }

  added(task, described) {
    saveRequest(task.id, described);
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    if (!this.running) return;
    let page = null;
    try {
      page = await api(`v1/video/generations?limit=${this.limit}`);
    } catch (exc) {
      this.empty.textContent = `The task list could not be read: ${exc.message}`;
      this.empty.hidden = false;
    }
    if (page && this.running) this.render(page);
    const busy = page && page.data.some((t) => !terminal(t));
    if (this.running) this.timer = setTimeout(() => this.refresh(), busy ? 1000 : 5000);
  }

  render(page) {
    const seen = new Set();
    const requests = loadRequests();
    page.data.forEach((task, i) => {
      seen.add(task.id);
      let row = this.rows.get(task.id);
      if (!row) {
        row = new TaskRow(this, task, requests[task.id]?.described);
        this.rows.set(task.id, row);
      }
      row.update(task);
      if (this.list.children[i] !== row.el) this.list.insertBefore(row.el, this.list.children[i] || null);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.el.remove();
        this.rows.delete(id);
      }
    }
    this.empty.textContent = "No tasks yet.";
    this.empty.hidden = page.data.length > 0;
    this.more.hidden = !page.has_more || this.limit >= 100;
  }
}

class TaskRow {
  constructor(owner, task, described) {
    this.owner = owner;
    this.described = described;
    this.status = h("span", { class: "status" });
    this.progress = h("progress", { max: 100, value: 0, "aria-label": `Progress of ${task.id}` });
    this.percent = h("span", { class: "percent" });
    this.time = h("span", { class: "time" });
    this.error = h("p", { class: "error", role: "alert" });
    this.actionError = "";
    this.cancel = h("button", { type: "button", onclick: () => this.act("cancel") }, "Cancel");
    this.remove = h("button", { type: "button", onclick: () => this.act("delete") }, "Delete");
    this.result = h("div", { class: "result" });
    this.json = h("pre", { class: "json" });
    this.el = h(
      "li",
      { class: "task", "data-task-id": task.id, "aria-label": `Task ${task.id}` },
      h(
        "div",
        { class: "head" },
        h("code", { class: "id" }, task.id),
        this.status,
        h("span", { class: "model" }, task.model),
        h("span", { class: "mode" }, task.mode),
        this.time,
      ),
      h("div", { class: "bar" }, this.progress, this.percent),
      h("div", { class: "actions" }, this.cancel, this.remove),
      this.error,
      this.result,
      h("details", {}, h("summary", {}, "Task JSON"), this.json),
      this.codeBlock(task),
    );
  }

  update(task) {
    this.task = task;
    this.el.dataset.status = task.status;
    this.status.textContent = statusWord(task);
    this.progress.value = task.progress;
    this.percent.textContent = `${task.progress}%`;
    this.time.textContent = timeTaken(task);
    this.cancel.hidden = terminal(task);
    this.remove.hidden = !terminal(task);
    this.error.textContent = this.actionError || (task.error ? task.error.message : "");
    this.json.textContent = JSON.stringify(task, null, 2);
    if (task.status === "completed" && !this.result.children.length) this.showResult(task);
  }

  showResult(task) {
    const video = h("video", { controls: true, preload: "metadata", src: task.video_url, "aria-label": `Video of ${task.id}` });
    const lastFrame = task.result && task.result.last_frame_url;
    this.result.append(video);
    if (lastFrame) {
      this.result.append(h("figure", {}, h("img", { src: lastFrame, alt: `Last frame of ${task.id}` }), h("figcaption", {}, "Last frame")));
    }
    this.result.append(
      h("p", {}, h("a", { href: task.video_url, download: `${task.id}.mp4` }, "Download MP4"), ` ${task.width}×${task.height}, ${task.duration} s`),
    );
  }

  codeBlock(task) {
    const box = h("details", { class: "code" }, h("summary", {}, "Copy as code"));
    if (!this.described) {
      box.append(h("p", { class: "hint" }, "This task was not made in this browser: its request is not known here."));
      return box;
    }
    const flavours = [
      ["curl", curl],
      ["Python client", pythonClient],
      ["OpenAI SDK", openaiSdk],
    ];
    const context = { origin: location.origin, keyed: this.owner.keyed, task };
    for (const [name, make] of flavours) {
      const pre = h("pre", { class: "snippet", "data-snippet": name }, make(this.described, context));
      const done = h("span", { class: "copied", role: "status" });
      const button = h("button", { type: "button", onclick: () => copy(pre.textContent, done) }, `Copy as ${name}`);
      box.append(h("div", { class: "flavour" }, button, done, pre));
    }
    return box;
  }

  async act(action) {
    if (action === "delete" && !confirm(`Delete ${this.task.id} and its video?`)) return;
    this.actionError = "";
    try {
      if (action === "cancel") await api(`v1/video/generations/${this.task.id}/cancel`, { method: "POST" });
      else await api(`v1/video/generations/${this.task.id}`, { method: "DELETE" });
      if (action === "delete") {
        this.el.remove();
        this.owner.rows.delete(this.task.id);
      }
    } catch (exc) {
      this.actionError = exc instanceof ApiError ? exc.message : String(exc);
      this.error.textContent = this.actionError;
    }
    this.owner.refresh();
  }
}

async function copy(text, done) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (plain http to another host): copy through a selection instead.
    const area = h("textarea", { class: "offscreen" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  done.textContent = "copied";
  setTimeout(() => (done.textContent = ""), 1500);
}
