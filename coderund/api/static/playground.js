// The coderund playground: log in, pick a language, edit, run live over /ws, see the verdict.
// Plain browser JavaScript against the public API; the session cookie authenticates every call.
"use strict";

const $ = (id) => document.getElementById(id);
// CodeMirror 5's mode for each language it has one for (none for NASM, Elixir, Nim, Prolog); each
// language's starting program is its plugin's example, from /languages.
const MODES = {
  bash: "shell", c: "text/x-csrc", "c-clang": "text/x-csrc", clojure: "clojure", cobol: "cobol",
  cpp: "text/x-c++src", "cpp-clang": "text/x-c++src", csharp: "text/x-csharp", d: "d", erlang: "erlang",
  fortran: "fortran", go: "go", groovy: "groovy", haskell: "haskell", java: "text/x-java", javascript: "javascript",
  kotlin: "text/x-kotlin", lisp: "commonlisp", lua: "lua", "objective-c": "text/x-objectivec", ocaml: "text/x-ocaml",
  octave: "octave", pascal: "pascal", perl: "perl", php: "application/x-httpd-php", pypy3: "python", python: "python",
  r: "r", racket: "scheme", ruby: "ruby", rust: "rust", scala: "text/x-scala", scheme: "scheme", sql: "text/x-sqlite",
  tcl: "tcl", typescript: "application/typescript",
};

let editor = null;
let languages = [];
let socket = null;
const drafts = JSON.parse(localStorage.getItem("coderund.drafts") || "{}");

async function api(method, path, body) {
  const response = await fetch(path, {
    method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try { data = await response.json(); } catch (e) { /* 204 and the like */ }
  return { status: response.status, data };
}

function show(panel) {
  $("login-panel").hidden = panel !== "login";
  $("workspace").hidden = panel !== "workspace";
  $("controls").hidden = panel !== "workspace";
  $("logout").hidden = panel !== "workspace";
  $("who").textContent = panel === "workspace" ? localStorage.getItem("coderund.user") || "" : "";
  if (panel === "workspace") editor.refresh();
}

async function start() {
  editor = CodeMirror.fromTextArea($("code"), {
    theme: "material-darker", lineNumbers: true, matchBrackets: true, autoCloseBrackets: true,
    indentUnit: 4, extraKeys: { "Ctrl-Enter": run, "Cmd-Enter": run },
  });
  editor.on("change", keepDraft);
  const listing = await api("GET", "/languages");
  languages = listing.data.languages;
  for (const lang of languages) $("language").add(new Option(`${lang.name} · ${lang.version}`, lang.name));
  $("language-count").textContent = languages.length;
  if (!$("stdin").value) $("stdin").value = "world"; // what the examples read
  $("language").value = localStorage.getItem("coderund.language") || "python";
  pickLanguage();
  const history = await api("GET", "/tasks?limit=8");
  if (history.status === 401) show("login");
  else { show("workspace"); listHistory((history.data && history.data.tasks) || []); }
}

function currentLanguage() {
  return languages.find((l) => l.name === $("language").value) || languages[0];
}

// An edited program is kept per language; the example itself is not, so a newer one shows.
function keepDraft() {
  const lang = currentLanguage();
  if (editor.getValue() === lang.example) delete drafts[lang.name];
  else drafts[lang.name] = editor.getValue();
  localStorage.setItem("coderund.drafts", JSON.stringify(drafts));
}

function pickLanguage() {
  const lang = currentLanguage();
  $("language").value = lang.name;
  localStorage.setItem("coderund.language", lang.name);
  editor.setOption("mode", MODES[lang.name] || null);
  editor.setValue(drafts[lang.name] || lang.example);
  $("entry-file").textContent = lang.entry_file;
  $("limits").textContent = `${lang.limits.time_ms / 1000} s · ${lang.limits.memory_mb} MB`;
}

async function enter(event, register) {
  event.preventDefault();
  const credentials = { username: $("username").value.trim(), password: $("password").value };
  $("login-error").textContent = "";
  if (register) {
    const made = await api("POST", "/register", credentials);
    if (made.status !== 201) { $("login-error").textContent = made.data.message; return; }
  }
  const session = await api("POST", "/login", credentials);
  if (session.status !== 200) { $("login-error").textContent = session.data.message; return; }
  localStorage.setItem("coderund.user", credentials.username);
  show("workspace");
  refreshHistory();
}

function append(kind, text) {
  const output = $("output");
  const span = document.createElement("span");
  span.className = kind;
  span.textContent = text;
  output.appendChild(span);
  output.scrollTop = output.scrollHeight;
}

function setVerdict(text, kind) {
  $("verdict").textContent = text;
  $("verdict").className = `verdict ${kind}`;
}

function running(yes) {
  $("run").disabled = yes;
  $("cancel").hidden = !yes;
  $("live-input").hidden = !(yes && $("interactive").checked);
  if (!$("live-input").hidden) $("live-line").focus();
}

function run() {
  if (socket) return;
  $("output").textContent = "";
  $("stats").textContent = "";
  setVerdict("running", "running");
  running(true);
  // The stdin box holds lines, and its last one ends too, as if typed: the program reads from a
  // terminal, where a line the input ends in comes without its newline (and CPython's input() then
  // drops its last character).
  const stdin = $("stdin").value;
  const task = { language: $("language").value, code: editor.getValue(), stdin: stdin && !stdin.endsWith("\n") ? `${stdin}\n` : stdin };
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  const ws = socket;
  ws.onopen = () => ws.send(JSON.stringify({ type: "run", task }));
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "accepted") {
      if (!$("interactive").checked) ws.send(JSON.stringify({ type: "eof" }));
    } else if (message.type === "stdout" || message.type === "stderr" || message.type === "compile") {
      append(message.type, message.data);
    } else if (message.type === "result") {
      finish(message.result);
    } else if (message.type === "error") {
      append("stderr", `${message.message}\n`);
      finish(null, message.error);
    }
  };
  ws.onclose = () => { if (socket === ws) finish(null, "disconnected"); };
}

function finish(result, problem) {
  const ws = socket;
  socket = null;
  if (ws) ws.close();
  running(false);
  if (!result) { setVerdict(problem || "failed", "bad"); return; }
  setVerdict(result.verdict.replace("_", " "), result.verdict === "ok" ? "ok" : "bad");
  const exit = result.signal ? `signal ${result.signal}` : result.exit_code !== null ? `exit ${result.exit_code}` : "";
  $("stats").textContent = [exit, `${result.time_ms ?? 0} ms cpu`, `${result.wall_ms ?? 0} ms`,
    `${((result.memory_kb || 0) / 1024).toFixed(1)} MB`].filter(Boolean).join(" · ");
  if (result.truncated) append("note", "\n[output truncated at the limit]\n");
  refreshHistory();
}

async function refreshHistory() {
  const history = await api("GET", "/tasks?limit=8");
  if (history.status === 200) listHistory(history.data.tasks);
}

function listHistory(tasks) {
  const list = $("history");
  list.textContent = "";
  for (const task of tasks) {
    const item = document.createElement("li");
    const when = new Date(task.created_at);
    item.innerHTML = "<span class=lang></span><span class=verdict></span><span class=when></span>";
    item.querySelector(".lang").textContent = task.language;
    item.querySelector(".verdict").textContent = task.verdict || task.state;
    item.querySelector(".verdict").classList.add(task.verdict === "ok" ? "ok" : task.verdict ? "bad" : "running");
    item.querySelector(".when").textContent = when.toLocaleTimeString();
    list.appendChild(item);
  }
}

$("language").addEventListener("change", pickLanguage);
$("run").addEventListener("click", run);
$("cancel").addEventListener("click", () => socket && socket.send(JSON.stringify({ type: "cancel" })));
$("login-form").addEventListener("submit", (event) => enter(event, false));
$("register").addEventListener("click", (event) => enter(event, true));
$("logout").addEventListener("click", async () => { await api("POST", "/logout"); show("login"); });
$("live-input").addEventListener("submit", (event) => {
  event.preventDefault();
  const line = `${$("live-line").value}\n`;
  $("live-line").value = "";
  append("note", line);
  if (socket) socket.send(JSON.stringify({ type: "stdin", data: line }));
});
$("send-eof").addEventListener("click", () => socket && socket.send(JSON.stringify({ type: "eof" })));
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && !$("workspace").hidden) { event.preventDefault(); run(); }
});
start();
