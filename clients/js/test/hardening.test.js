// What an outside attack on the client found, each shown against the real server: events of a
// channel with no snapshot kept across a reconnect, a token that expired while away refreshed,
// many channels made again within the server's rate limit, requests that wait for the next
// connection, a handler that joins late, a frame too big refused without losing the connection,
// a listener that throws, a network that drops everything, renewals with nothing fresher, a late
// presence answer, and what getToken may give.

import { test, before } from "node:test";
import assert from "node:assert/strict";

import { SwapcastClient, CloseCode } from "../swapcast.js";
import { Server, until, binaryAvailable, BIN, proxied, record, ids } from "./server.js";

before(() => {
  if (!binaryAvailable()) {
    const why = `no server binary at ${BIN} (run cargo build, or set SWAPCAST_BIN)`;
    if (process.env.CI === "true") throw new Error(why);
    console.log(`skipping: ${why}`);
    process.exit(0);
  }
});


function framesOut(client, type) {
  const sent = [];
  client.on("frame", ({ direction, data }) => {
    if (direction === "out" && JSON.parse(data).type === type) sent.push(JSON.parse(data));
  });
  return sent;
}

/** The network goes down (connections broken, new ones refused) and `closed` is noticed. */
async function goDown(client, proxy) {
  let dropped = false;
  const off = client.on("close", () => (dropped = true));
  proxy.refuse();
  proxy.cut();
  await until(() => dropped, "the drop noticed");
  off();
}

test("notifications made while away arrive after the reconnect, with or without other channels", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Bookable");
  await server.batteries(station, "b", 2);
  for (const withStation of [false, true]) {
    const driver = await server.user();
    const client = new SwapcastClient({
      url: proxy.address,
      getToken: () => driver.access_token,
      backoff: { base: 50, max: 200 },
    });
    t.after(() => client.close());
    const notes = record(client, "notifications");
    if (withStation) {
      const watched = record(client, `station:${station}`);
      await until(() => watched.some((m) => m.action === "snapshot"), "the station's snapshot");
    }
    await until(() => client.ready, "signed in");

    await goDown(client, proxy);
    const admin = server.admin.access_token;
    await server.fetch("POST", "/api/notifications", {
      token: admin,
      body: { user_id: driver.user.id, title: "Hello", message: "while you were away" },
    });
    await server.fetch("POST", "/api/bookings", { token: driver.access_token, body: { station_id: station } });
    proxy.accept();

    await until(() => notes.length >= 2, `both personal events (with a station channel: ${withStation})`);
    assert.deepEqual(
      notes.map((m) => m.type),
      ["notification", "booking_confirmed"],
    );
    assert.equal(new Set(ids(notes)).size, 2, "each once");
  }
});

test("a token that expired while the client was away is refreshed, also when the first refresh fails", async (t) => {
  const { server, proxy } = await proxied(t, { SWAPCAST_ACCESS_TTL: "3" });
  const driver = await server.user();
  let session = driver;
  const reasons = [];
  let failures = 1;
  const client = new SwapcastClient({
    url: proxy.address,
    backoff: { base: 50, max: 200 },
    // The README's getToken: the token at hand to connect, a refresh otherwise.
    getToken: async ({ reason }) => {
      reasons.push(reason);
      if (reason === "connect") return session.access_token;
      if (failures-- > 0) throw new Error("the refresh endpoint is down");
      session = await server.refresh(session.refresh_token);
      return session.access_token;
    },
  });
  t.after(() => client.close());
  let stopped = null;
  client.on("stopped", (why) => (stopped = why));
  await until(() => client.ready, "signed in");
  const expiresAt = JSON.parse(Buffer.from(driver.access_token.split(".")[1], "base64url")).exp * 1000;

  await goDown(client, proxy);
  await until(() => Date.now() > expiresAt + 500, "the token to expire while away");
  proxy.accept();
  await until(() => client.ready && session !== driver, "signed in again with a refreshed token");
  assert.equal(stopped, null);
  assert.ok(reasons.filter((r) => r === "expired").length >= 2, `refreshed after a failure: ${reasons}`);
  const lastConnect = reasons.lastIndexOf("connect");
  const firstExpired = reasons.indexOf("expired");
  assert.ok(lastConnect < firstExpired, `no stale token after the expiry: ${reasons}`);
});

test("sixty channels are all made, and made again after a reconnect, within the rate limit", async (t) => {
  const { server, proxy } = await proxied(t);
  const stations = [];
  for (let i = 0; i < 60; i++) stations.push(await server.station(`S${i}`));
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 50, max: 200 } });
  t.after(() => client.close());
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  await until(() => client.ready, "open");
  const seen = new Map(stations.map((s) => [s, record(client, `station:${s}`)]));
  await until(() => [...seen.values()].every((m) => m.some((x) => x.action === "snapshot")), "sixty snapshots", 30000);
  const from = new Map([...seen].map(([s, m]) => [s, m[0].last_event_id]));

  await goDown(client, proxy);
  for (const station of stations) await server.batteries(station, "away", 1);
  proxy.accept();
  await until(() => [...seen.values()].every((m) => ids(m).length === 2), "every channel's missed events", 30000);
  for (const [station, messages] of seen) {
    assert.deepEqual(ids(messages), await server.eventIds(station, from.get(station)), `station ${station}`);
  }
  assert.deepEqual(errors, [], "nothing rate-limited");
});

test("a request made while the connection is down waits for the next one and is sent once", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Listed");
  const client = new SwapcastClient({ url: proxy.address, backoff: { base: 50, max: 200 } });
  t.after(() => client.close());
  const sent = framesOut(client, "request");
  const closes = [];
  client.on("close", (c) => closes.push(c));
  await until(() => client.ready, "open");
  await goDown(client, proxy);
  const answer = client.request("get_station", { station_id: station }, { timeout: 15000 });
  // Several attempts fail meanwhile; the request still waits.
  await until(() => closes.length >= 4, "three failed attempts");
  proxy.accept();
  const got = await answer;
  assert.equal(got.id, station);
  assert.equal(sent.length, 1, "sent once");

  // Before the first connection, with the server unreachable, too.
  proxy.refuse();
  const early = new SwapcastClient({ url: proxy.address, backoff: { base: 50, max: 200 } });
  t.after(() => early.close());
  const pending = early.request("get_station", { station_id: station }, { timeout: 15000 });
  await until(() => early.state === "reconnecting", "a failed first attempt");
  proxy.accept();
  assert.equal((await pending).id, station);
});

test("a handler that joins a channel after its snapshot gets a snapshot of its own first", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Shared");
  await server.batteries(station, "b", 3);
  const client = new SwapcastClient({ url: server.address });
  t.after(() => client.close());
  const first = record(client, `station:${station}`);
  await until(() => first.some((m) => m.action === "snapshot"), "the first handler's snapshot");
  await server.batteries(station, "c", 1);
  await until(() => ids(first).length === 2, "the live events");

  const second = record(client, `station:${station}`);
  await until(() => second.length === 1, "the second handler's snapshot");
  assert.equal(second[0].action, "snapshot");
  assert.equal(second[0].total_batteries, 4);
  assert.equal(second[0].last_event_id, ids(first).at(-1));
  await server.batteries(station, "d", 1);
  await until(() => ids(second).length === 2, "live events for both");
  assert.deepEqual(ids(second), ids(first).slice(-2));
});

test("a request over the frame limit is refused unsent and the connection stays", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Announced");
  const client = new SwapcastClient({ url: server.address });
  t.after(() => client.close());
  const closes = [];
  client.on("close", (c) => closes.push(c));
  await until(() => client.ready, "open");
  await assert.rejects(client.announce(station, "x".repeat(70000)), (e) => e.code === "too_big");
  assert.equal((await client.request("get_station", { station_id: station })).id, station);
  assert.deepEqual(closes, []);
  assert.equal(client.state, "open");
});

test("a listener that throws keeps the message from no one and does not end the process", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Throwing");
  const client = new SwapcastClient({ url: server.address });
  t.after(() => client.close());
  const reported = [];
  const consoleError = console.error;
  console.error = (...args) => reported.push(args);
  t.after(() => (console.error = consoleError));
  client.subscribe(`station:${station}`, (m) => {
    if (m.type === "battery_added") throw new Error("the app's bug");
  });
  const second = record(client, `station:${station}`);
  const all = [];
  client.on("event", (m) => all.push(m));
  client.on("event", () => {
    throw new Error("another bug");
  });
  await until(() => second.some((m) => m.action === "snapshot"), "the snapshot");
  await server.batteries(station, "b", 2);
  await until(() => ids(second).length === 4, "every event");
  assert.deepEqual(ids(all), ids(second));
  assert.ok(reported.length >= 2, "the throws were reported");
});

test("a network that drops everything and closes nothing is noticed by the heartbeat and left", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Black hole");
  const client = new SwapcastClient({
    url: proxy.address,
    heartbeat: 300,
    heartbeatTimeout: 300,
    backoff: { base: 50, max: 200 },
  });
  t.after(() => client.close());
  const closes = [];
  client.on("close", (c) => closes.push(c));
  const seen = record(client, `station:${station}`);
  await until(() => seen.some((m) => m.action === "snapshot"), "the snapshot");
  const start = seen[0].last_event_id;
  proxy.hold();
  await server.batteries(station, "unseen", 1);
  await until(() => closes.length >= 1, "the silence noticed");
  assert.equal(closes[0].reason, "no answer to a ping");
  proxy.cut();
  proxy.release();
  await until(() => client.ready, "open again");
  await server.batteries(station, "after", 1);
  const expected = await server.eventIds(station, start);
  await until(() => ids(seen).length === expected.length, "every event");
  assert.deepEqual(ids(seen), expected);
});

test("with no fresher token, a renewal is not sent again and again", async (t) => {
  const server = await Server.start({ SWAPCAST_ACCESS_TTL: "4" });
  t.after(() => server.close());
  const driver = await server.user();
  const client = new SwapcastClient({
    url: server.address,
    getToken: () => driver.access_token,
    backoff: { base: 1000, max: 1000 },
  });
  t.after(() => client.close());
  const sent = framesOut(client, "authenticate");
  const warnings = [];
  client.on("frame", ({ direction, data }) => direction === "in" && data.includes('"token_expiring"') && warnings.push(data));
  // What had happened by the first close (the client comes back at once after it).
  const closes = [];
  client.on("close", (c) => closes.push({ ...c, warnings: warnings.length, sent: sent.length }));
  await until(() => closes.length >= 1, "the close at exp");
  assert.equal(closes[0].code, CloseCode.TOKEN_EXPIRED);
  assert.equal(closes[0].warnings, 1, "warned once");
  assert.equal(closes[0].sent, 1, "the sign-in alone: the same token renews nothing");
});

test("a late presence answer is not taken for the next question's", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Watched");
  const client = new SwapcastClient({ url: proxy.address });
  t.after(() => client.close());
  await until(() => client.ready, "open");
  proxy.hold();
  await assert.rejects(client.presence(`station:${station}`, { timeout: 300 }), (e) => e.code === "timeout");
  // Now a viewer comes (straight to the server), then the late answer (0 viewers) goes by.
  const viewer = new SwapcastClient({ url: server.address });
  t.after(() => viewer.close());
  record(viewer, `station:${station}`);
  await until(async () => (await server.fetch("GET", `/api/stations/${station}/presence`)).viewers === 1, "the viewer");
  proxy.release();
  const now = await client.presence(`station:${station}`);
  assert.equal(now.viewers, 1);
  assert.equal(typeof now.request_id, "string");
});

test("presence on a seed feed is refused at once; getToken giving no string is an error, not a sign-in", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const station = await server.station("Seed");
  const seed = new SwapcastClient({ url: server.address, path: `/ws/stations/${station}/` });
  t.after(() => seed.close());
  await assert.rejects(seed.presence(`station:${station}`), (e) => e.code === "not_multiplexed");

  for (const odd of ["", 42, {}]) {
    const client = new SwapcastClient({ url: server.address, getToken: () => odd, backoff: { base: 50, max: 100 } });
    t.after(() => client.close());
    const errors = [];
    client.on("error", (e) => errors.push(e.code));
    let stopped = false;
    client.on("stopped", () => (stopped = true));
    await until(() => errors.length >= 2, `${JSON.stringify(odd)}: errors`);
    assert.ok(errors.every((c) => c === "token_unavailable"), errors.join());
    assert.equal(stopped, false);
    assert.equal(client.ready, false, "not signed in anonymously");
  }
});

test("after the client stops, what waited fails with stopped and the close code", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const client = new SwapcastClient({ url: server.address, getToken: () => "not.a.token" });
  const waiting = client.request("list_stations");
  await assert.rejects(waiting, (e) => e.code === "stopped" && e.closeCode === CloseCode.INVALID_TOKEN);
  await assert.rejects(client.request("list_stations"), (e) => e.code === "stopped");
});

test("a channel left and made again at once: the new handler gets the snapshot first, nothing of the old one", async (t) => {
  const { server, proxy } = await proxied(t);
  const station = await server.station("Again");
  const client = new SwapcastClient({ url: proxy.address });
  t.after(() => client.close());
  const old = [];
  const leave = client.subscribe(`station:${station}`, (m) => old.push(m));
  await until(() => old.some((m) => m.action === "snapshot"), "the first snapshot");
  // The server's events for the old subscription are on the way (held), when the app leaves
  // and comes back.
  proxy.hold();
  await server.batteries(station, "in-flight", 2);
  leave();
  const fresh = record(client, `station:${station}`);
  await until(async () => (await server.eventIds(station, 0)).length === 4, "the events made");
  proxy.release();
  await until(() => fresh.some((m) => m.action === "snapshot"), "the new snapshot");
  assert.equal(fresh[0].action, "snapshot", JSON.stringify(fresh[0]));
  assert.equal(fresh[0].total_batteries, 2);
});

test("a handler added from inside another, mid-snapshot or on an event, gets each station's snapshot once, first", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const stations = [];
  for (let i = 0; i < 30; i++) stations.push(await server.station(`N${i}`));
  const client = new SwapcastClient({ url: server.address });
  t.after(() => client.close());
  const first = [];
  const midSnapshot = [];
  const onEvent = [];
  let snapshotsSeen = 0;
  let joinedOnEvent = false;
  client.subscribe("stations", (m) => {
    first.push(m);
    if (m.action === "snapshot" && ++snapshotsSeen === 10) client.subscribe("stations", (x) => midSnapshot.push(x));
    if (m.type === "battery_added" && !joinedOnEvent) {
      joinedOnEvent = true;
      client.subscribe("stations", (x) => onEvent.push(x));
    }
  });
  await until(() => snapshotsSeen === 30, "the whole snapshot");
  for (const station of stations.slice(0, 3)) await server.batteries(station, "n", 1);
  await until(() => ids(first).length === 6 && ids(onEvent).length === 5, "the events");

  for (const [name, seen] of [["mid-snapshot", midSnapshot], ["on an event", onEvent]]) {
    const snaps = seen.filter((m) => m.action === "snapshot");
    assert.equal(snaps.length, 30, `${name}: one snapshot per station`);
    assert.equal(new Set(snaps.map((m) => m.station_id)).size, 30, `${name}: each station once`);
    assert.ok(seen.slice(0, 30).every((m) => m.action === "snapshot"), `${name}: the snapshot first`);
  }
  assert.deepEqual(ids(midSnapshot), ids(first));
  assert.deepEqual(ids(onEvent), ids(first).slice(1), "every event after the one it joined on");
});

test("heartbeat: 0 turns the heartbeat off: a quiet connection is neither pinged nor left", async (t) => {
  const server = await Server.start();
  t.after(() => server.close());
  const client = new SwapcastClient({ url: server.address, heartbeat: 0, heartbeatTimeout: 100 });
  t.after(() => client.close());
  const pings = framesOut(client, "ping");
  const closes = [];
  client.on("close", (c) => closes.push(c));
  await until(() => client.ready, "open");
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.deepEqual(pings, []);
  assert.deepEqual(closes, []);
});
