// The declarations describe what the modules export, and nothing the modules lack.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as client from "../swapcast.js";
import * as react from "../react.js";

function declared(file) {
  const text = readFileSync(new URL(file, import.meta.url), "utf8");
  return [...text.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]).sort();
}

test("every runtime export is declared, and every declaration exported", () => {
  assert.deepEqual(Object.keys(client).sort(), [...new Set(declared("../swapcast.d.ts"))]);
  assert.deepEqual(Object.keys(react).sort(), [...new Set(declared("../react.d.ts"))]);
});

test("every method the declarations give SwapcastClient exists", () => {
  const text = readFileSync(new URL("../swapcast.d.ts", import.meta.url), "utf8");
  const body = text.slice(text.indexOf("export declare class SwapcastClient"));
  const methods = [...body.matchAll(/^  (\w+)(?:<[^>]*>)?\(/gm)].map((m) => m[1]).filter((m) => m !== "constructor");
  assert.ok(methods.length >= 6, methods.join());
  for (const method of methods) assert.equal(typeof client.SwapcastClient.prototype[method], "function", method);
});
