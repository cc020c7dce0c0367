// coderund-kernel.js: a stateful sandbox's JavaScript context, started by its hub (hub.py) as nobody,
// on the image's node. The same protocol as kernel.py: runs arrive as JSON lines {"code", "count"} on
// REQUEST_FD; each gives {"type": "result", "data": a MIME bundle} for its value and each display(),
// then {"type": "done", "error": null | {"name", "value", "traceback"}} on EVENT_FD, each with the run's
// "count". What the code prints goes to stdout and stderr, pipes the hub reads.
//
// Each run is a script in one vm context, so globals, functions and top-level let/const persist from
// run to run; the script's completion value is the run's value, awaited when it is a promise (as
// Node's REPL does). Code with a top-level await runs as the body of an async function whose value is
// its last line's, when that line is an expression: its declarations stay its own (globalThis.name =
// ... keeps a value). ES module imports (`import { x } from 'fs'`) become require() calls, as a
// script cannot import. The hub's SIGINT (a timeout) stops a running script and is ignored between runs.
//
// With --typescript, each run's code is TypeScript: the image's compiler (Debian's node-typescript) makes
// it JavaScript first, types removed and not checked, as a notebook's TypeScript kernel does.
//
// Usage: node kernel.js REQUEST_FD EVENT_FD [--typescript]
'use strict';
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { createRequire } = require('module');

const [requestFd, eventFd] = process.argv.slice(2, 4).map(Number);
const typescript = process.argv[4] === '--typescript';
let count = 0; // the run's: the hub takes only its current run's events
const send = (event) => fs.writeSync(eventFd, JSON.stringify({ ...event, count }) + '\n');
const bundle = (value) => ({ 'text/plain': typeof value === 'string' ? util.inspect(value) : util.inspect(value, { depth: 4 }) });

const sandbox = {
  console, process, Buffer, URL, URLSearchParams, TextEncoder, TextDecoder, setTimeout, clearTimeout, setInterval,
  clearInterval, setImmediate, clearImmediate, queueMicrotask, structuredClone,
  require: createRequire(path.join(process.cwd(), 'main.js')),
  __importDefault: (module) => (module && module.__esModule ? module.default : module),
  display: (...values) => values.forEach((value) => send({ type: 'result', data: bundle(value) })),
};
const context = vm.createContext(sandbox);
process.on('SIGINT', () => {}); // between runs; during one, breakOnSigint ends the script

// The user's frames only: the stack up to where vm and this file begin.
const ours = (line) => line.includes('node:vm') || line.includes(__filename);
const userStack = (stack) => {
  const lines = String(stack || '').split('\n');
  const end = lines.findIndex(ours);
  return (end < 0 ? lines : lines.slice(0, end)).join('\n');
};

const ERROR_CHARS = 65536; // as the hub's: a longer error would not be passed on whole
const cut = (text) => String(text).slice(0, ERROR_CHARS);

function errorOf(e) {
  if (e && typeof e === 'object' && 'stack' in e) {
    return { name: cut(e.name || 'Error'), value: cut(e.message || ''), traceback: userStack(e.stack).slice(-ERROR_CHARS) };
  }
  return { name: 'Error', value: cut(`thrown: ${util.inspect(e)}`), traceback: '' };
}

// import X, { a, b as c } from 'm' | import * as X from 'm' | import 'm', one per line
const IMPORT = /^[ \t]*import\s+(?:([\w$]+)\s*,?\s*)?(?:\*\s*as\s+([\w$]+)|\{([^}]*)\})?\s*(?:from\s*)?(['"][^'"\n]+['"])[ \t]*;?[ \t]*$/gm;
const imports = (code) => code.replace(IMPORT, (line, name, all, names, from) => {
  const parts = [];
  if (name) parts.push(`var ${name} = __importDefault(require(${from}));`);
  if (all) parts.push(`var ${all} = require(${from});`);
  if (names) parts.push(`var { ${names.replace(/\s+as\s+/g, ': ')} } = require(${from});`);
  return parts.length ? parts.join(' ') : `require(${from});`;
});

// TypeScript to JavaScript of the same shape: imports and a top-level await left for compile() below.
function javascriptOf(code) {
  let ts;
  try {
    ts = require('typescript');
  } catch (e) {
    throw new Error("this sandbox's image has no TypeScript (Debian's node-typescript)");
  }
  const options = { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, removeComments: false };
  return ts.transpileModule(code, { compilerOptions: options, reportDiagnostics: false }).outputText;
}

function compile(code, filename) {
  code = imports(typescript ? javascriptOf(code) : code);
  try {
    return new vm.Script(code, { filename });
  } catch (e) {
    if (!(e instanceof SyntaxError) || !/await is only valid/.test(e.message)) throw e;
  }
  // An async function's body: its last line, when an expression, is its value.
  const lines = code.replace(/\s+$/, '').split('\n');
  const last = lines.pop().replace(/;\s*$/, '');
  for (const body of [`${lines.join('\n')}\nreturn (${last}\n);`, code]) {
    try {
      return new vm.Script(`(async () => {\n${body}\n})()`, { filename, lineOffset: -1 });
    } catch (e) {
      if (body === code) throw e;
    }
  }
}

async function execute(request) {
  const script = compile(request.code, `<cell ${request.count}>`);
  let value = script.runInContext(context, { breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === 'function') value = await value;
  return value;
}

async function serve() {
  const lines = readline.createInterface({ input: fs.createReadStream(null, { fd: requestFd }), crlfDelay: Infinity });
  for await (const line of lines) {
    const request = JSON.parse(line);
    count = request.count;
    let error = null;
    const env = request.env || {};
    const saved = Object.fromEntries(Object.keys(env).map((name) => [name, process.env[name]])); // this run's own variables
    Object.assign(process.env, env);
    try {
      const value = await execute(request);
      if (value !== undefined) {
        sandbox._ = value;
        send({ type: 'result', data: bundle(value), main: true }); // the cell's value, not a display()
      }
    } catch (e) {
      error = errorOf(e);
    }
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    send({ type: 'done', error });
  }
}

serve().catch((e) => {
  process.stderr.write(`coderund kernel.js: ${e.stack}\n`);
  process.exit(70);
});
