// One media input of the create form (first frame, last frame, reference images/videos/audios):
// files picked from disk or dropped on its box (read as data: URIs) and links typed in.

import { bytes, h } from "./dom.js";

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export class MediaField {
  constructor(box, onChange) {
    this.box = box;
    this.field = box.dataset.field; // the API's field name: image, last_image, images, videos, audios
    this.kind = box.dataset.kind;
    this.max = Number(box.dataset.max);
    this.single = this.max === 1;
    this.fileInput = box.querySelector("input[type=file]");
    this.urlInput = box.querySelector("input[type=url], textarea");
    this.list = box.querySelector(".picked");
    this.count = box.querySelector(`#${this.field}-count`);
    this.label = box.querySelector("label").textContent;
    this.onChange = onChange;
    this.files = []; // {name, size, type, dataUri}
    this.reading = Promise.resolve();

    this.fileInput.addEventListener("change", () => {
      this.add([...this.fileInput.files]);
      this.fileInput.value = ""; // the same file can be picked again after removing it
    });
    this.urlInput.addEventListener("input", () => {
      // One first (or last) frame: a link typed in replaces a picked file, and the other way round.
      if (this.single && this.urlInput.value.trim() && this.files.length) {
        this.files = [];
        this.render();
      }
      this.changed();
    });
    box.addEventListener("dragover", (event) => {
      event.preventDefault();
      box.classList.add("dropping");
    });
    box.addEventListener("dragleave", () => box.classList.remove("dropping"));
    box.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      box.classList.remove("dropping");
      const dropped = event.dataTransfer;
      if (dropped.files && dropped.files.length) {
        this.add([...dropped.files]);
        return;
      }
      const link = (dropped.getData("text/uri-list") || dropped.getData("text/plain") || "").trim();
      if (link) {
        this.urlInput.value = this.single || !this.urlInput.value ? link : `${this.urlInput.value}\n${link}`;
        this.changed();
      }
    });
  }

  add(files) {
    if (!files.length) return;
    const picked = this.single ? files.slice(0, 1) : files;
    this.reading = Promise.all(
      picked.map(async (file) => ({ name: file.name, size: file.size, type: file.type, dataUri: await readAsDataUri(file) })),
    ).then((read) => {
      if (this.single) this.urlInput.value = "";
      this.files = this.single ? read : [...this.files, ...read];
      this.render();
      this.changed();
    });
    return this.reading;
  }

  remove(index) {
    this.files.splice(index, 1);
    this.render();
    this.changed();
  }

  links() {
    const text = this.urlInput.value;
    const lines = this.single ? [text] : text.split("\n");
    return lines.map((line) => line.trim()).filter(Boolean);
  }

  // Every item in the order sent: files first, then links. A file is {file}, a link {url}.
  items() {
    return [...this.files.map((file) => ({ file })), ...this.links().map((url) => ({ url }))];
  }

  isSet() {
    return this.items().length > 0;
  }

  changed() {
    if (this.count) {
      const n = this.items().length;
      this.count.textContent = n ? `${n} of at most ${this.max}` : `up to ${this.max}`;
      this.count.classList.toggle("over", n > this.max);
    }
    this.onChange();
  }

  render() {
    this.list.replaceChildren(
      ...this.files.map((file, i) =>
        h(
          "li",
          {},
          this.kind === "image" ? h("img", { src: file.dataUri, alt: "" }) : null,
          h("span", {}, `${file.name} (${bytes(file.size)})`),
          h("button", { type: "button", class: "remove", "aria-label": `Remove ${file.name}`, onclick: () => this.remove(i) }, "×"),
        ),
      ),
    );
  }

  clear() {
    this.files = [];
    this.urlInput.value = "";
    this.render();
    this.changed();
  }
}
