// The React hook against the real server: the Battery Swap document's shape (`inventory`,
// `isConnected`), kept live by the client, with the events.

import { test, before } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";

import { SwapcastClient } from "../swapcast.js";
import { useStationWebSocket } from "../react.js";
import { Server, until, binaryAvailable, BIN } from "./server.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = false;

before(() => {
  if (!binaryAvailable()) {
    if (process.env.CI === "true") throw new Error(`no server binary at ${BIN}`);
    console.log(`skipping: no server binary at ${BIN}`);
    process.exit(0);
  }
});

test("useStationWebSocket: inventory and isConnected as the document's hook, live and resumed", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Hooked");
  await server.batteries(station, "first", 2);
  const client = new SwapcastClient({ url: server.address, backoff: { base: 100, max: 500 } });
  t.after(() => client.close());
  let latest = null;
  function Station({ id }) {
    latest = useStationWebSocket(id, { client });
    return null;
  }
  const view = TestRenderer.create(createElement(Station, { id: station }));
  t.after(() => view.unmount());

  await until(() => latest.inventory?.total === 2, "the snapshot's counts");
  assert.deepEqual(latest.inventory, { available: 2, booked: 0, total: 2 });
  assert.equal(latest.isConnected, true);
  assert.deepEqual(latest.events, [], "a snapshot is state, not an event");

  await server.batteries(station, "live", 1);
  await until(() => latest.inventory.total === 3, "a live change");
  assert.deepEqual(latest.events.map((e) => e.type), ["battery_added", "inventory_update"]);
  assert.equal(latest.lastEvent.type, "inventory_update");

  // Across a restart: disconnected, then resumed with what happened meanwhile.
  await server.stop();
  await until(() => latest.isConnected === false, "isConnected false while down");
  await server.run();
  await server.batteries(station, "meanwhile", 1);
  await until(() => latest.isConnected && latest.inventory.total === 4, "resumed");
  assert.deepEqual(
    latest.events.map((e) => e.type),
    ["battery_added", "inventory_update", "battery_added", "inventory_update"],
    "each event once",
  );
});

test("useStationWebSocket(null) keeps every station's counts by id", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const [a, b] = [await server.station("A"), await server.station("B")];
  await server.batteries(b, "b", 1);
  let latest = null;
  function Network() {
    latest = useStationWebSocket(null, { url: server.address });
    return null;
  }
  const view = TestRenderer.create(createElement(Network));
  t.after(() => view.unmount());
  await until(() => latest.inventory?.[a] && latest.inventory?.[b], "both stations");
  assert.deepEqual(latest.inventory[a], { available: 0, booked: 0, total: 0 });
  assert.deepEqual(latest.inventory[b], { available: 1, booked: 0, total: 1 });
});

test("useStationWebSocket: hooks sharing a client, a change of station, keep: 0", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const [a, b] = [await server.station("A"), await server.station("B")];
  await server.batteries(a, "a", 1);
  await server.batteries(b, "b", 2);
  const client = new SwapcastClient({ url: server.address });
  t.after(() => client.close());
  const latest = {};
  // Every render of the detail, as [station id, inventory]: none may show another's counts.
  const renders = [];
  function Card({ name, id, keep }) {
    latest[name] = useStationWebSocket(id, { client, keep });
    if (name === "detail") renders.push([id, latest[name].inventory?.total ?? null]);
    return null;
  }
  const tree = (detail) =>
    createElement("div", null, [
      createElement(Card, { key: "list", name: "list", id: a }),
      createElement(Card, { key: "detail", name: "detail", id: detail, keep: 0 }),
    ]);
  const view = TestRenderer.create(tree(999999));
  t.after(() => view.unmount());
  await until(() => latest.detail.error?.code === "not_found", "an unknown station's error");
  await until(() => latest.list.inventory?.total === 1, "the list's station");

  // The detail moves to the list's station: it shares the channel, and gets its counts.
  view.update(tree(a));
  await until(() => latest.detail.inventory?.total === 1, "the shared station's counts");
  assert.equal(latest.detail.error, null, "the last station's error is not this one's");
  view.update(tree(b));
  await until(() => latest.detail.inventory?.total === 2, "station B's counts");
  await server.batteries(b, "more", 1);
  await until(() => latest.detail.inventory?.total === 3, "a live change");
  assert.deepEqual(latest.detail.events, [], "keep: 0 keeps no events");
  const expected = { [a]: [1], [b]: [2, 3], 999999: [] };
  for (const [id, total] of renders) {
    if (total !== null) assert.ok(expected[id].includes(total), `station ${id} rendered with ${total}`);
  }
});
