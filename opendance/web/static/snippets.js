// "Copy as curl / Python client / OpenAI SDK": the request that made a task, as code that makes
// the same task again. Files picked in the page appear by their name (read from the current
// folder when the code runs); the key is read from OPENDANCE_API_KEY, never pasted in.

const isFile = (v) => v !== null && typeof v === "object" && !Array.isArray(v) && "file" in v;
const MEDIA = ["image", "last_image", "images", "videos", "audios"];
const CLIENT_EXTRAS = ["seed", "negative_prompt", "generate_audio", "watermark", "camera_fixed", "return_last_frame", "callback_url"];

// ---- curl ---------------------------------------------------------------------------------

const shellQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

export function curl(described, { origin, keyed }) {
  const files = [];
  const marked = JSON.parse(JSON.stringify(described), (key, value) => {
    if (isFile(value)) {
      files.push(value);
      return `@@opendance-file-${files.length - 1}@@`;
    }
    return value;
  });
  let json = JSON.stringify(marked, null, 2);
  let delimiter = "'EOF'"; // quoted: the shell leaves the body alone
  if (files.length) {
    // Unquoted, so that $(base64 ...) runs; everything else the shell would touch is escaped.
    delimiter = "EOF";
    json = json.replace(/[\\$`]/g, (c) => `\\${c}`);
    json = json.replace(/@@opendance-file-(\d+)@@/g, (_, i) => {
      const f = files[Number(i)];
      return `data:${f.type};base64,$(base64 < ${shellQuote(f.file)} | tr -d '\\n')`;
    });
  }
  const lines = [`curl -sS ${shellQuote(`${origin}/v1/video/generations`)} \\`];
  if (keyed) lines.push(`  -H "Authorization: Bearer $OPENDANCE_API_KEY" \\`);
  lines.push(`  -H 'Content-Type: application/json' \\`, `  -d @- <<${delimiter}`, json, "EOF");
  return lines.join("\n") + "\n";
}

// ---- Python -------------------------------------------------------------------------------

function py(value, file) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value); // a valid Python str literal
  if (isFile(value)) return file(value);
  if (Array.isArray(value)) return `[${value.map((v) => py(v, file)).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${py(v, file)}`).join(", ")}}`;
}

const byName = (f) => JSON.stringify(f.file);

export function pythonClient(described, { origin, keyed }) {
  const args = [JSON.stringify(described.model)];
  for (const key of ["prompt", ...MEDIA, "duration", "aspect_ratio"]) {
    if (key in described) args.push(`${key}=${py(described[key], byName)}`);
  }
  const extra = { ...(described.extra_body || {}) };
  for (const key of CLIENT_EXTRAS) {
    if (key in extra) {
      args.push(`${key}=${py(extra[key], byName)}`);
      delete extra[key];
    }
  }
  if (Object.keys(extra).length) args.push(`extra_body=${py(extra, byName)}`);
  const usesFiles = JSON.stringify(described).includes('"file":');
  const notes = [];
  if (usesFiles) notes.push("# Files are read from the current folder.");
  if (keyed) notes.push("# The key comes from OPENDANCE_API_KEY.");
  return [
    "import opendance",
    "",
    ...notes,
    `with opendance.Client(${JSON.stringify(origin)}) as client:`,
    "    task = client.create(",
    ...args.map((a) => `        ${a},`),
    "    )",
    "    task = client.wait(task, on_progress=lambda t: print(t.status, t.progress))",
    "    client.download(task, f\"{task.id}.mp4\")",
    "",
  ].join("\n");
}

// ---- OpenAI SDK ---------------------------------------------------------------------------

// What OpenAI's Videos API can say itself: a prompt, one first frame, seconds and size, and the
// seed and negative prompt that opendance takes as extensions.
function openaiCanSay(d) {
  const extra = Object.keys(d.extra_body || {});
  return !["last_image", "images", "videos", "audios"].some((k) => k in d) && extra.every((k) => k === "seed" || k === "negative_prompt");
}

export function openaiSdk(described, { origin, keyed, task }) {
  const key = keyed ? 'os.environ["OPENDANCE_API_KEY"]' : '"none"';
  const client = [
    ...(keyed ? [] : ["# The server is open: any key works."]),
    `client = OpenAI(base_url=${JSON.stringify(`${origin}/v1`)}, api_key=${key})`,
  ].join("\n");
  const download = 'client.videos.download_content(video.id).write_to_file(f"{video.id}.mp4")';
  if (openaiCanSay(described)) {
    const args = [`model=${JSON.stringify(described.model)}`, `prompt=${JSON.stringify(described.prompt ?? "")}`];
    if ("duration" in described) args.push(`seconds=${JSON.stringify(String(described.duration))}`);
    if ("aspect_ratio" in described && task) args.push(`size=${JSON.stringify(`${task.width}x${task.height}`)}`);
    if (isFile(described.image)) args.push(`input_reference=open(${JSON.stringify(described.image.file)}, "rb")`);
    else if (described.image) args.push(`input_reference={"image_url": ${JSON.stringify(described.image)}}`);
    if (described.extra_body) args.push(`extra_body=${py(described.extra_body, byName)}`);
    return [
      ...(keyed ? ["import os", ""] : []),
      "from openai import OpenAI",
      "",
      client,
      "video = client.videos.create_and_poll(",
      ...args.map((a) => `    ${a},`),
      ")",
      download,
      "",
    ].join("\n");
  }
  const dataUri = (f) => `data_uri(${JSON.stringify(f.file)}, ${JSON.stringify(f.type)})`;
  const usesFiles = JSON.stringify(described).includes('"file":');
  return [
    ...(usesFiles ? ["import base64"] : []),
    ...(keyed ? ["import os"] : []),
    ...(usesFiles || keyed ? [""] : []),
    "from openai import OpenAI",
    "",
    ...(usesFiles
      ? [
          "",
          "def data_uri(path, mime):",
          '    with open(path, "rb") as f:',
          '        return f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"',
          "",
          "",
        ]
      : []),
    client,
    "# OpenAI's Videos API has no field for part of this request (last frame, references or options):",
    "# the SDK's post() sends it to the task route as it is, and videos.poll() follows the task.",
    'task = client.post("/video/generations", cast_to=object, body={',
    ...Object.entries(described).map(([k, v]) => `    ${JSON.stringify(k)}: ${py(v, dataUri)},`),
    "})",
    'video = client.videos.poll(task["id"])',
    download,
    "",
  ].join("\n");
}
