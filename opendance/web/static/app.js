// The playground's entry: find out whether the server needs a key, then run the create form and
// the task list with it. Everything goes through the public API (api.js).

import { api, apiKey, ApiError, probe, setApiKey } from "./api.js";
import { CreateForm } from "./form.js";
import { TaskList } from "./tasks.js";

const $ = (id) => document.getElementById(id);

const form = new CreateForm($("create"));
let tasks = null;

function showAccess(text, kind) {
  const status = $("server-status");
  status.textContent = text;
  status.dataset.kind = kind;
}

function run(models, keyed) {
  form.setModels(models);
  if (tasks) tasks.stop();
  tasks = new TaskList($("tasks"), { keyed });
  tasks.start();
}

// With keys on the server: use the key from the box (or the one kept from last time).
async function useKey(key) {
  $("api-key-error").textContent = "";
  $("api-key").removeAttribute("aria-invalid");
  if (tasks) tasks.stop();
  if (!key) {
    showAccess("This server needs an API key: enter yours.", "keyed");
    return;
  }
  setApiKey(key);
  try {
    const models = await api("v1/models");
    showAccess(`This server needs an API key; using the key ending in …${key.slice(-4)}.`, "keyed");
    run(models.data, true);
  } catch (exc) {
    const message = exc instanceof ApiError && exc.status === 401 ? `${exc.message}: this key is not one of the server's` : exc.message;
    $("api-key-error").textContent = message;
    $("api-key").setAttribute("aria-invalid", "true");
    showAccess("This server needs an API key: enter yours.", "keyed");
  }
}

async function boot() {
  let access;
  try {
    access = await probe();
  } catch (exc) {
    showAccess(`The server did not answer: ${exc.message}`, "down");
    return;
  }
  if (access.open) {
    showAccess("This server is open: no API key is needed, and anyone who can reach it can use it.", "open");
    run(access.models, false);
    return;
  }
  $("key-form").hidden = false;
  $("api-key").value = apiKey();
  await useKey(apiKey());
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  useKey($("api-key").value.trim());
});

$("forget-key").addEventListener("click", () => {
  setApiKey("");
  $("api-key").value = "";
  useKey("");
});

$("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("generate");
  button.disabled = true;
  form.clearErrors();
  try {
    const { body, described } = await form.request();
    const task = await api("v1/video/generations", { method: "POST", body });
    tasks?.added(task, described);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) {
      $("api-key-error").textContent = exc.message;
      $("api-key").focus();
    } else {
      form.showError(exc instanceof ApiError ? exc : { message: String(exc), param: null });
    }
  } finally {
    button.disabled = false;
  }
});

// A file dropped beside a box would make the browser leave the page (and the form) to show it.
for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());

boot();
