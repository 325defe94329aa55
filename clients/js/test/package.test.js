// `npm pack` makes a package that installs and imports: both entry points, in a fresh project.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = join(dirname(fileURLToPath(import.meta.url)), "..");

test("the packed package installs and both entry points import", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "swapcast-pack-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync("npm", ["pack", "--pack-destination", dir, "--loglevel=error"], { cwd: here, stdio: "pipe" });
  const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  assert.ok(tarball, "a tarball");
  const project = join(dir, "app");
  execFileSync("mkdir", ["-p", project]);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", type: "module", private: true }));
  // The React entry needs React; the app brings its own (here, the one this package tests with).
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", join(dir, tarball), join(here, "node_modules", "react")], {
    cwd: project,
    stdio: "pipe",
  });
  const script = `
    const client = await import("@swapcast/client");
    const react = await import("@swapcast/client/react");
    console.log(JSON.stringify([Object.keys(client).sort(), Object.keys(react)]));
  `;
  const out = execFileSync("node", ["--input-type=module", "-e", script], { cwd: project, encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), [["CloseCode", "SwapcastClient", "SwapcastError", "backoffDelay"], ["useStationWebSocket"]]);
});
