// The client against the real server binary: resume across a restart and across a 1013 close
// with nothing lost or doubled, refresh on 4002, renewal before expiry, backoff with jitter,
// requests and their typed errors. Run: `node --experimental-websocket --test` in clients/js
// (after `cargo build`; SWAPCAST_BIN names another binary).

import { test, before } from "node:test";
import assert from "node:assert/strict";

import { SwapcastClient, SwapcastError, backoffDelay, CloseCode } from "../swapcast.js";
import { Server, until, binaryAvailable, BIN, proxied, record, ids } from "./server.js";

before(() => {
  if (!binaryAvailable()) {
    const why = `no server binary at ${BIN} (run cargo build, or set SWAPCAST_BIN)`;
    if (process.env.CI === "true") throw new Error(why);
    console.log(`skipping: ${why}`);
    process.exit(0);
  }
});

const snapshots = (messages) => messages.filter((m) => m.action === "snapshot").length;

/** Waits until the client has delivered every event of the log for `station` after `after`,
 * then says they are exactly those: none lost, none twice, in order. */
async function deliveredExactly(server, seen, station, after) {
  const expected = await server.eventIds(station, after);
  const last = expected.at(-1);
  await until(() => ids(seen).includes(last), `event ${last}`);
  assert.deepEqual(ids(seen), expected);
  return expected;
}


function closes(client) {
  const seen = [];
  client.on("close", (close) => seen.push(close));
  return seen;
}

function opened(client) {
  return until(() => client.ready, "the client to be open again");
}

test("resumes across a server restart: nothing lost, nothing twice, no second snapshot", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Restarted");
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 100, max: 1000 } });
  t.after(() => client.close());
  const seen = record(client, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the snapshot");
  const start = seen[0].last_event_id;
  await server.batteries(station, "before", 3);
  await until(() => ids(seen).length === 6, "the first events");

  // Down, and kept down while events are made: the client must get them from the log.
  const drops = closes(client);
  proxy.refuse();
  await server.stop();
  await server.run();
  await server.batteries(station, "while-away", 3);
  await until(() => drops.length >= 1, "the drop noticed");
  proxy.accept();
  await opened(client);
  await server.batteries(station, "after", 3);

  const all = await deliveredExactly(server, seen, station, start);
  assert.equal(all.length, 18);
  assert.equal(snapshots(seen), 1, "resumed, not started over");
  assert.equal(drops[0].code, CloseCode.GOING_AWAY, "shutdown says 1001");
});

test("resumes across a 1013 close of a reader that stopped: nothing lost, nothing twice", async (t) => {
  const { server, proxy } = await proxied(t, { SWAPCAST_HEARTBEAT: "1" });
  const station = await server.station("Slow reader");
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 100, max: 1000 } });
  t.after(() => client.close());
  const drops = closes(client);
  const seen = record(client, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the snapshot");
  const start = seen[0].last_event_id;

  // The client stops reading: the server hears no Pong and closes it (1013, resume later).
  proxy.hold();
  await server.batteries(station, "unread", 3);
  await until(() => proxy.serverEnded(), "the server to give up on the reader");
  await server.batteries(station, "after-the-close", 3);
  proxy.release();
  await until(() => drops.length >= 1, "the close");
  assert.equal(drops[0].code, CloseCode.TRY_AGAIN, JSON.stringify(drops[0]));
  await opened(client);
  await server.batteries(station, "live-again", 2);

  const all = await deliveredExactly(server, seen, station, start);
  assert.equal(all.length, 16);
  assert.equal(snapshots(seen), 1);
});

test("refreshes the token on 4002 and resumes", async (t) => {
  const server = await Server.start({ SWAPCAST_ACCESS_TTL: "3" });
  t.after(() => server.close());
  const driver = await server.user();
  const station = await server.station("Expiring");
  let session = driver;
  const reasons = [];
  const client = new SwapcastClient({
    url: server.address,
    renew: false,
    getToken: async ({ reason }) => {
      reasons.push(reason);
      if (reason === "expired") session = await server.refresh(session.refresh_token);
      return session.access_token;
    },
  });
  t.after(() => client.close());
  const drops = closes(client);
  const seen = record(client, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the snapshot");
  const start = seen[0].last_event_id;
  await server.batteries(station, "before-expiry", 2);
  await until(() => drops.some((d) => d.code === CloseCode.TOKEN_EXPIRED), "the 4002", 15000);
  await server.batteries(station, "during", 2);
  await until(() => client.ready, "the reconnection");
  await server.batteries(station, "after", 2);
  await deliveredExactly(server, seen, station, start);
  assert.ok(reasons.includes("expired"), reasons.join());
  assert.equal(drops.find((d) => d.code === CloseCode.TOKEN_EXPIRED).reconnectIn, 0, "at once, not after a backoff");
  assert.equal(snapshots(seen), 1);
});

test("renews the token in place before it expires: the connection never drops", async (t) => {
  const server = await Server.start({ SWAPCAST_ACCESS_TTL: "6" });
  t.after(() => server.close());
  const operator = await server.user("operator");
  const station = await server.station("Renewed", operator);
  let session = operator;
  const client = new SwapcastClient({
    url: server.address,
    getToken: async ({ reason }) => {
      if (reason !== "connect") session = await server.refresh(session.refresh_token);
      return session.access_token;
    },
  });
  t.after(() => client.close());
  const drops = closes(client);
  let signIns = 0;
  client.on("authenticated", () => (signIns += 1));
  const seen = record(client, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the snapshot");
  // Two renewals: past the first token's expiry.
  await until(() => signIns >= 3, "two renewals", 20000);
  await server.batteries(station, "after-renewals", 1);
  await until(() => ids(seen).length === 2, "live events after the renewals");
  assert.deepEqual(drops, [], "never closed");
  assert.equal(snapshots(seen), 1, "the automatic subscription was kept, not made again");
});

test("a refused token stops the client and tells the app; it does not retry", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const bad = new SwapcastClient({ url: server.address, getToken: () => "not-a-token" });
  const stopped = await new Promise((resolve) => bad.on("stopped", resolve));
  assert.equal(stopped.code, CloseCode.INVALID_TOKEN);
  assert.equal(bad.state, "closed");

  const seed = new SwapcastClient({ url: server.address, path: "/ws/notifications/", getToken: () => "garbage" });
  const seedStopped = await new Promise((resolve) => seed.on("stopped", resolve));
  assert.equal(seedStopped.code, CloseCode.INVALID_TOKEN);
  assert.equal(seed.state, "closed");
});

test("requests resolve with their data, fail with the contract's codes, and time out", async (t) => {
  const { server, proxy } = await proxied(t);
  const driver = await server.user();
  const station = await server.station("Requested");
  await server.batteries(station, "bookable", 1);
  const client = new SwapcastClient({ url: proxy.address, getToken: () => driver.access_token });
  t.after(() => client.close());

  const booked = await client.request("book_battery", { station_id: station });
  assert.equal(booked.station_id ?? booked.booking?.station_id, station, JSON.stringify(booked));
  await assert.rejects(client.request("book_battery", { station_id: 999999 }), (e) => {
    assert.ok(e instanceof SwapcastError);
    assert.equal(e.code, "not_found");
    assert.equal(e.action, "book_battery");
    return true;
  });
  await assert.rejects(client.request("set_station_status", { station_id: station, status: "offline" }), {
    code: "forbidden",
  });
  await assert.rejects(client.announce(station, "drivers may not"), { code: "forbidden" });

  // No answer (the server's frames held back): the request fails in time, and a late answer
  // is dropped quietly.
  proxy.hold();
  await assert.rejects(client.request("list_stations", {}, { timeout: 300 }), { code: "timeout" });
  proxy.release();
  const listed = await client.request("list_stations");
  assert.ok(Array.isArray(listed.items ?? listed), JSON.stringify(listed).slice(0, 200));
});

test("200 clients dropped together spread their reconnects (full jitter) and all come back", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Crowded");
  const base = 2000;
  const clients = Array.from({ length: 200 }, () => new SwapcastClient({ url: server.address, backoff: { base, max: 8000 } }));
  t.after(() => clients.forEach((c) => c.close()));
  const firstDelay = new Map();
  const reopened = new Set();
  for (const client of clients) {
    client.subscribe(`station:${station}`);
    client.on("close", ({ reconnectIn }) => {
      if (!firstDelay.has(client)) firstDelay.set(client, reconnectIn);
    });
  }
  await until(() => clients.every((c) => c.ready), "200 connections");
  for (const client of clients) client.on("open", () => reopened.add(client));

  await server.stop();
  await until(() => firstDelay.size === 200, "every client to notice");
  const delays = [...firstDelay.values()];
  // Spread over [0, base): no tenth of the range holds a quarter of them, and they span most of it.
  const buckets = new Array(10).fill(0);
  for (const delay of delays) buckets[Math.min(9, Math.floor((delay / base) * 10))] += 1;
  assert.ok(Math.max(...buckets) < 50, `bunched: ${buckets}`);
  assert.ok(Math.max(...delays) - Math.min(...delays) > base / 2, `narrow: ${Math.min(...delays)}..${Math.max(...delays)}`);
  assert.ok(delays.every((d) => d >= 0 && d < base));

  await server.run();
  await until(() => reopened.size === 200, "all 200 back", 60000).catch((e) => {
    const states = {};
    for (const c of clients) states[c.state] = (states[c.state] ?? 0) + 1;
    throw new Error(`${e.message}: ${reopened.size} back, states ${JSON.stringify(states)}`);
  });
});

test("backoff: full jitter under a ceiling that doubles up to the maximum", () => {
  const options = { base: 100, max: 1000 };
  assert.equal(backoffDelay(0, options, () => 0.999), 99);
  assert.equal(backoffDelay(3, options, () => 0.5), 400);
  assert.equal(backoffDelay(10, options, () => 0.999), 999, "capped");
  assert.equal(backoffDelay(50, options, () => 0), 0);
});

test("a resume from events no longer kept tells the app (resume_expired) and starts from a snapshot", async (t) => {
  const { server, proxy } = await proxied(t, { SWAPCAST_EVENT_RETENTION: "1" });
  const station = await server.station("Forgetful");
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 100, max: 500 } });
  t.after(() => client.close());
  const expired = [];
  client.on("resume_expired", (e) => expired.push(e));
  const seen = record(client, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the snapshot");
  const position = seen[0].last_event_id;

  proxy.refuse();
  proxy.cut();
  await server.batteries(station, "forgotten", 2);
  // Past the retention, and swept.
  await until(async () => (await server.eventIds(station, position)).length === 0, "the events to be swept");
  proxy.accept();
  await until(() => snapshots(seen) === 2, "a second snapshot");
  assert.deepEqual(expired, [{ channel: `station:${station}` }]);
  const latest = seen.filter((m) => m.action === "snapshot").at(-1);
  assert.equal(latest.total_batteries, 2, "the snapshot has what the lost events did");
  assert.deepEqual(ids(seen), [], "no event delivered: they were gone");
});

test("reconnects at once when the browser says it is back online, not after the backoff", async (t) => {
  const { server, proxy } = await proxied(t);
  // A browser's window, for the client's "online" listener.
  const window = new EventTarget();
  globalThis.addEventListener = window.addEventListener.bind(window);
  globalThis.removeEventListener = window.removeEventListener.bind(window);
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  // Every backoff as long as it gets: only "online" can bring it back within the test.
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 60000, max: 60000 }, random: () => 0.999 });
  t.after(() => client.close());
  const drops = closes(client);
  await until(() => client.ready, "connected");
  proxy.cut();
  await until(() => drops.length === 1, "the drop");
  assert.ok(drops[0].reconnectIn > 50000, JSON.stringify(drops[0]));
  window.dispatchEvent(new Event("online"));
  await until(() => client.ready, "back at once", 10000);
});

test("presence and announcements through the client", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const operator = await server.user("operator");
  const station = await server.station("Announced", operator);
  const viewer = new SwapcastClient({ url: server.address });
  t.after(() => viewer.close());
  const seen = record(viewer, `station:${station}`);
  await until(() => snapshots(seen) === 1, "the viewer's snapshot");
  const staff = new SwapcastClient({ url: server.address, getToken: () => operator.access_token });
  t.after(() => staff.close());
  const notices = record(staff, `station:${station}`);
  const present = await staff.presence(`station:${station}`);
  assert.equal(present.viewers >= 1, true, JSON.stringify(present));
  assert.ok(Array.isArray(present.signed_in), "staff see who");
  const anonymous = await viewer.presence(`station:${station}`);
  assert.equal(anonymous.signed_in, undefined, "others see the count alone");
  await assert.rejects(viewer.presence("station:999999"), { code: "not_found" });

  await staff.announce(station, "Closed for maintenance in 10 minutes", "warning");
  await until(() => seen.some((m) => m.type === "station_announcement"), "the announcement");
  const told = seen.find((m) => m.type === "station_announcement");
  assert.equal(told.message, "Closed for maintenance in 10 minutes");
  assert.equal(told.level, "warning");
  assert.equal(typeof told.event_id, "number", "an event: resumable");
  await until(() => notices.some((m) => m.type === "station_announcement"), "staff hear it too");
});
