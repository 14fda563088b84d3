// A static HTTP server on 127.0.0.1 for the Hydrogen test page (hydrogen/), the SDK's
// files, Olm, and three CommonJS packages the SDK imports, wrapped as ES modules.
// Only files under this folder's hydrogen/ and node_modules/ are served.

import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODULES = path.join(HERE, "node_modules");
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".png": "image/png",
};

/** The file a URL path names inside `root`, or null when it would leave it. */
function inside(root, rest) {
  const file = path.resolve(root, "." + path.posix.normalize("/" + decodeURIComponent(rest)));
  return file.startsWith(root + path.sep) ? file : null;
}

/** (file, wrap as ES module?) for a URL path, or null for a 404. */
function locate(urlPath) {
  if (urlPath === "/" || urlPath === "/index.html") return [path.join(HERE, "hydrogen", "index.html"), false];
  if (urlPath === "/sw.js") return [path.join(MODULES, "hydrogen-view-sdk", "lib-build", "sw.js"), false];
  if (urlPath === "/app.mjs" || urlPath === "/empty.mjs") return [path.join(HERE, "hydrogen", urlPath.slice(1)), false];
  const mounts = [
    ["/sdk/", path.join(MODULES, "hydrogen-view-sdk"), false],
    ["/olm/", path.join(MODULES, "@matrix-org", "olm"), false],
    ["/modules/", MODULES, false],
    ["/cjs/", MODULES, true],
  ];
  for (const [prefix, root, wrap] of mounts) {
    if (urlPath.startsWith(prefix)) {
      const file = inside(root, urlPath.slice(prefix.length));
      return file ? [file, wrap] : null;
    }
  }
  return null;
}

// CommonJS evaluated inside an ES module: `module.exports` becomes the default export.
const wrapCommonJs = (source) =>
  `const module = { exports: {} }; const exports = module.exports;\n${source}\nexport default module.exports;\n`;

/** Start serving; resolves to {url, close()}. */
export function serveHydrogen() {
  const server = http.createServer(async (request, response) => {
    const urlPath = new URL(request.url, "http://127.0.0.1").pathname;
    const found = locate(urlPath);
    try {
      if (!found) throw Object.assign(new Error("not found"), { code: "ENOENT" });
      const [file, wrap] = found;
      const body = await readFile(file);
      const type = wrap ? TYPES[".js"] : TYPES[path.extname(file)] ?? "application/octet-stream";
      response.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" });
      response.end(wrap ? wrapCommonJs(body.toString("utf8")) : body);
    } catch (err) {
      response.writeHead(err.code === "ENOENT" || err.code === "EISDIR" ? 404 : 500);
      response.end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }),
      });
    });
  });
}
