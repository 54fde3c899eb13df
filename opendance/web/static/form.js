// The create form: the model list, the fields of POST /v1/video/generations, the mode the inputs
// select (shown before sending), and the server's errors shown beside the field they name.

import { h } from "./dom.js";
import { MediaField } from "./media.js";

const MEDIA = ["image", "last_image", "images", "videos", "audios"];

// The mode from the input form, as the API chooses it (spec/api.md): conflicts are not resolved
// here either, only explained; the server has the last word and names the field.
export function chooseMode(has) {
  const refs = ["images", "videos", "audios"].filter((k) => has[k]);
  if (has.last_image && !has.image) return { mode: null, note: "a last frame needs a first frame" };
  if (refs.length && (has.image || has.last_image)) {
    return { mode: null, note: "first/last frames and references select different modes: use one or the other" };
  }
  if (has.audios && !has.images && !has.videos) return { mode: null, note: "reference audio needs a reference image or video" };
  if (refs.length) return { mode: "omni-reference", note: "" };
  if (has.image) return { mode: has.last_image ? "first-and-last-frame" : "image-to-video", note: "" };
  return { mode: "text-to-video", note: "" };
}

// "images[2]" -> "images", "extra_body.loras[1].scale" -> "extra_body.loras".
export function fieldOf(param) {
  return (param || "").replace(/\[.*$/, "");
}

export class CreateForm {
  constructor(form) {
    this.form = form;
    this.el = (id) => form.querySelector(`#${id}`);
    this.models = [];
    this.media = Object.fromEntries(
      [...form.querySelectorAll(".media")].map((box) => [box.dataset.field, new MediaField(box, () => this.update())]),
    );
    this.el("model").addEventListener("change", () => this.update());
    for (const field of Object.values(this.media)) field.changed();
  }

  setModels(models) {
    const select = this.el("model");
    const previous = select.value;
    this.models = models;
    select.replaceChildren(...models.map((m) => h("option", { value: m.id }, m.id)));
    if (models.some((m) => m.id === previous)) select.value = previous;
    this.update();
  }

  model() {
    return this.models.find((m) => m.id === this.el("model").value) || null;
  }

  // What the inputs select, shown before sending; and the model's card (resolution, modes, loras).
  update() {
    const has = Object.fromEntries(MEDIA.map((k) => [k, this.media[k].isSet()]));
    const { mode, note } = chooseMode(has);
    const model = this.model();
    this.el("mode").value = mode || "none";
    let warning = note;
    if (mode && model && model.modes && !model.modes.includes(mode)) warning = `${model.id} cannot do ${mode}`;
    this.el("mode-note").textContent = warning;
    this.el("mode-line").classList.toggle("conflict", Boolean(warning));
    this.el("model-info").textContent = model ? `${model.resolution || ""} · ${(model.modes || []).join(", ")}` : "";
    this.renderLoras(model);
  }

  // A picker only when the model's card lists LoRA names (the models file names them).
  renderLoras(model) {
    const names = model && Array.isArray(model.loras) ? model.loras : [];
    const box = this.el("loras");
    const list = this.el("lora-list");
    if (box.dataset.model === (model && model.id) && list.children.length === names.length) return;
    box.dataset.model = model ? model.id : "";
    box.hidden = names.length === 0;
    list.replaceChildren(
      ...names.map((name) =>
        h(
          "div",
          { class: "lora", "data-lora": name },
          h("label", {}, h("input", { type: "checkbox", class: "lora-on" }), ` ${name}`),
          h("label", {}, " scale ", h("input", { type: "text", inputmode: "decimal", class: "lora-scale", value: "1", "aria-label": `${name} scale` })),
        ),
      ),
    );
  }

  // The create body, and the same body with each file replaced by {file: name, type} for the
  // "copy as code" snippets (data: URIs are far too big to keep or to paste).
  async request() {
    await Promise.all(Object.values(this.media).map((m) => m.reading));
    const body = { model: this.el("model").value };
    const described = { model: body.model };
    const set = (key, value, shown = value) => {
      body[key] = value;
      described[key] = shown;
    };
    const prompt = this.el("prompt").value;
    if (prompt !== "") set("prompt", prompt);
    for (const key of MEDIA) {
      const items = this.media[key].items();
      if (!items.length) continue;
      const sent = items.map((i) => (i.file ? i.file.dataUri : i.url));
      const shown = items.map((i) => (i.file ? { file: i.file.name, type: i.file.type || "application/octet-stream" } : i.url));
      if (this.media[key].single) set(key, sent[0], shown[0]);
      else set(key, sent, shown);
    }
    const duration = this.el("duration").value.trim();
    if (duration !== "") set("duration", number(duration));
    const aspect = this.el("aspect_ratio").value;
    if (aspect) set("aspect_ratio", aspect);
    const extra = {};
    const seed = this.el("seed").value.trim();
    if (seed !== "") extra.seed = number(seed);
    const negative = this.el("negative_prompt").value;
    if (negative) extra.negative_prompt = negative;
    if (this.el("generate_audio").checked) extra.generate_audio = true;
    if (this.el("return_last_frame").checked) extra.return_last_frame = true;
    const loras = [...this.form.querySelectorAll(".lora")]
      .filter((row) => row.querySelector(".lora-on").checked)
      .map((row) => ({ name: row.dataset.lora, scale: number(row.querySelector(".lora-scale").value) }));
    if (loras.length) extra.loras = loras;
    if (Object.keys(extra).length) set("extra_body", extra);
    return { body, described };
  }

  clearErrors() {
    for (const el of this.form.querySelectorAll(".error")) el.textContent = "";
    for (const el of this.form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // The error beside the field its param names ("videos[1]" beside Reference videos); an error
  // that names no field of the form goes beside the Generate button.
  showError(error) {
    this.clearErrors();
    const field = fieldOf(error.param);
    const target = (field && this.form.querySelector(`[data-error-for="${CSS.escape(field)}"]`)) || this.el("form-error");
    target.textContent = error.param && target.id === "form-error" ? `${error.param}: ${error.message}` : error.message;
    target.closest("details")?.setAttribute("open", ""); // the Options box, if the field is in it
    const control = target.closest(".field, .media, fieldset")?.querySelector("input, select, textarea");
    if (control && target.id !== "form-error") {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
    target.scrollIntoView({ block: "nearest" });
  }
}

// "5" -> 5; "5.5" -> 5.5; anything else is sent as typed, for the server to name the problem.
function number(text) {
  const n = Number(text);
  return text.trim() !== "" && Number.isFinite(n) ? n : text;
}
