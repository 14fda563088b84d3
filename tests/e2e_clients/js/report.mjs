// How the Node scripts talk to pytest (tests/e2e_clients/homeservers.py `run_node`):
// stdout carries only "E2E {json}" lines — {"step": ...} as a script goes, {"result": ...}
// at the end, {"error": ...} before a non-zero exit. Every library's logging goes to
// stderr, so nothing a library prints can be mistaken for a result.

const write = (obj) => process.stdout.write("E2E " + JSON.stringify(obj) + "\n");
const toStderr = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
console.log = console.info = console.debug = console.trace = toStderr;

export const started = Date.now();

/** One progress line: what just happened and when (ms since the script started). */
export function step(name, details = {}) {
  write({ step: name, ms: Date.now() - started, ...details });
}

/** The script's answer, then exit 0 (client libraries keep timers alive; they are not waited for). */
export function finish(result) {
  write({ result });
  process.exit(0);
}

/** A failure with its reason, then exit 1. */
export function fail(err) {
  write({ error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
}

/** The config object pytest passed as JSON in argv[2]. */
export function config() {
  return JSON.parse(process.argv[2]);
}

/**
 * Poll `check` (sync or async) every 50 ms until it returns a truthy value, which is returned;
 * an Error naming `what` after `timeoutMs`.
 */
export async function until(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The whole script under one deadline: a hung library call still ends the process with a reason. */
export function run(main, timeoutMs) {
  const timer = setTimeout(() => fail(new Error(`the script ran past ${timeoutMs} ms`)), timeoutMs);
  timer.unref();
  main().then(finish, fail);
}
