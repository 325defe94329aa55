// The real server for the client's tests: the `swapcast` binary (SWAPCAST_BIN, else the
// workspace's debug build) on a fresh SQLite database and a port of its own, with an admin, and a
// proxy in front that can stop passing the server's frames on (a reader that stops) or refuse
// connections (a server that is down) — so every test runs against the real thing.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { createServer, connect } from "node:net";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SWAPCAST_BIN ?? join(here, "..", "..", "..", "target", "debug", "swapcast");
export const PASSWORD = "correct horse battery";
const ADMIN = "admin@swapcast.test";
const SECRET = "a test secret that is long enough for HS256";

export function binaryAvailable() {
  return existsSync(BIN);
}

/** A free loopback port (the server binds it itself; a restart binds the same). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

export class Server {
  /** Starts the binary with `env` on a new database; `await server.ready` before use. */
  static async start(env = {}) {
    const server = new Server(env, await freePort());
    await server.run();
    server.admin = await server.login(ADMIN);
    return server;
  }

  constructor(env, port) {
    this.env = env;
    this.port = port;
    this.dir = mkdtempSync(join(tmpdir(), "swapcast-js-"));
    this.database = `sqlite://${join(this.dir, "swapcast.db")}`;
    this.address = `http://127.0.0.1:${port}`;
    this.users = 0;
    this.log = [];
  }

  environment() {
    return {
      ...process.env,
      DATABASE_URL: this.database,
      SWAPCAST_BIND: `127.0.0.1:${this.port}`,
      SWAPCAST_JWT_SECRET: SECRET,
      SWAPCAST_ADMIN_PASSWORD: PASSWORD,
      RUST_LOG: "warn,swapcast::startup=info",
      NO_COLOR: "1",
      ...this.env,
    };
  }

  /** Runs the server (again, after `stop`), resolved once it listens. */
  async run() {
    if (!this.admin) {
      execFileSync(BIN, ["create-admin", "--email", ADMIN, "--database-url", this.database], {
        env: this.environment(),
        stdio: "pipe",
      });
    }
    this.child = spawn(BIN, ["serve"], { env: this.environment(), stdio: ["ignore", "pipe", "pipe"] });
    const from = this.log.length;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.exited = exited;
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => this.log.push(chunk));
    }
    const listening = new Promise((resolve, reject) => {
      const look = () => {
        const since = this.log.slice(from).join("");
        if (since.includes(`port=${this.port}`) || since.includes(`"port":${this.port}`)) {
          this.child.stdout.off("data", look);
          resolve();
        }
      };
      this.child.stdout.on("data", look);
      exited.then((code) => reject(new Error(`the server exited (${code}) before listening:\n${this.log.join("")}`)));
      look();
    });
    await listening;
  }

  /** SIGTERM (every connection gets 1001) and waits for the exit. */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill("SIGTERM");
    await this.exited;
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  async fetch(method, path, { token, body } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response = await fetch(this.address + path, { method, headers, body: body && JSON.stringify(body) });
    if (response.status === 401 && this.admin && token === this.admin.access_token) {
      // Tests of expiry run with short-lived tokens: the admin signs in again.
      this.admin = await this.login(ADMIN);
      headers.Authorization = `Bearer ${this.admin.access_token}`;
      response = await fetch(this.address + path, { method, headers, body: body && JSON.stringify(body) });
    }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return data;
  }

  /** Signs in: `{access_token, refresh_token, user}`. */
  login(email) {
    return this.fetch("POST", "/api/auth/login", { body: { email, password: PASSWORD } });
  }

  refresh(refreshToken) {
    return this.fetch("POST", "/api/auth/refresh", { body: { refresh_token: refreshToken } });
  }

  /** A new user with `role`, signed in. */
  async user(role = "user") {
    this.users += 1;
    const email = `${role}-${this.users}-${process.pid}@swapcast.test`;
    const { user } = await this.fetch("POST", "/api/auth/register", {
      body: { email, password: PASSWORD, display_name: `Driver ${this.users}` },
    });
    if (role !== "user") {
      await this.fetch("PATCH", `/api/users/${user.id}`, { token: this.admin.access_token, body: { role } });
    }
    return { ...(await this.login(email)), email };
  }

  async station(name, operator) {
    const body = { name, address: "1 Main St", operator_id: operator?.user.id };
    return (await this.fetch("POST", "/api/stations", { token: this.admin.access_token, body })).id;
  }

  /** Adds `n` batteries (two events each: `battery_added`, `inventory_update`). */
  async batteries(station, prefix, n) {
    for (let i = 0; i < n; i++) {
      await this.fetch("POST", `/api/stations/${station}/batteries`, {
        token: this.admin.access_token,
        body: { serial: `${prefix}-${i}-${Math.random().toString(36).slice(2, 8)}`, model: "Model 3", soc: 90, soh: 98 },
      });
    }
  }

  /** The ids of the log's events of `station` after `after` (what a watcher must get). */
  async eventIds(station, after) {
    const ids = [];
    let cursor = after;
    for (;;) {
      const page = await this.fetch("GET", `/api/events?after=${cursor}&limit=500`, { token: this.admin.access_token });
      for (const item of page.items) {
        cursor = item.event_id;
        if (item.station_id === station) ids.push(item.event_id);
      }
      if (!page.items.length || page.next_cursor === null) return ids;
    }
  }
}

/**
 * A TCP proxy in front of the server. `hold()` stops passing the server's bytes on to clients
 * (keeping them, in order) — to the server the client has stopped reading; `release()` lets them
 * through. `refuse()` turns new connections away (the server looks down); `accept()` undoes it.
 */
export class Proxy {
  static async start(port) {
    const proxy = new Proxy(port);
    await new Promise((resolve) => proxy.listener.listen(0, "127.0.0.1", resolve));
    proxy.address = `http://127.0.0.1:${proxy.listener.address().port}`;
    return proxy;
  }

  constructor(port) {
    this.port = port;
    this.held = false;
    this.refusing = false;
    this.pipes = new Set();
    this.connections = 0;
    this.listener = createServer((client) => this.pipe(client));
  }

  pipe(client) {
    if (this.refusing) return client.destroy();
    this.connections += 1;
    const upstream = connect(this.port, "127.0.0.1");
    const pipe = { client, upstream, queue: [], ended: false };
    this.pipes.add(pipe);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => (this.held ? pipe.queue.push(chunk) : client.write(chunk)));
    upstream.on("end", () => {
      pipe.ended = true;
      if (!this.held) client.end();
    });
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.pipes.delete(pipe);
    };
    client.on("error", drop);
    upstream.on("error", () => {
      if (!this.held) drop();
      else pipe.ended = true;
    });
    client.on("close", () => upstream.destroy());
  }

  hold() {
    this.held = true;
  }

  /** Whether the server has ended a held connection (everything it sent is in the queue). */
  serverEnded() {
    return [...this.pipes].some((p) => p.ended);
  }

  release() {
    this.held = false;
    for (const pipe of this.pipes) {
      for (const chunk of pipe.queue) pipe.client.write(chunk);
      pipe.queue = [];
      if (pipe.ended) pipe.client.end();
    }
  }

  refuse() {
    this.refusing = true;
  }

  /** Breaks every connection through the proxy now (no close frame: the network failed). */
  cut() {
    for (const pipe of this.pipes) {
      pipe.client.destroy();
      pipe.upstream.destroy();
    }
    this.pipes.clear();
  }

  accept() {
    this.refusing = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.listener.close(resolve));
  }
}

/** Waits until `check()` is truthy (polling), or fails after `ms` saying `what`. */
export async function until(check, what, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A server with a proxy in front, both gone when the test `t` ends. */
export async function proxied(t, env = {}) {
  const server = await Server.start(env);
  const proxy = await Proxy.start(server.port);
  t.after(async () => {
    await proxy.close();
    await server.close();
  });
  return { server, proxy };
}

/** Every message the client delivers on `channel`, in order. */
export function record(client, channel) {
  const seen = [];
  client.subscribe(channel, (message) => seen.push(message));
  return seen;
}

/** The event ids among `messages`, in order. */
export const ids = (messages) => messages.filter((m) => typeof m.event_id === "number").map((m) => m.event_id);
