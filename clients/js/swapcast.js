// The swapcast client: one WebSocket kept open for an app, so that no app writes reconnect logic
// again. It reconnects with exponential backoff and full jitter, resumes every channel after the
// last event it delivered (so nothing is lost and nothing comes twice), renews the token in place
// before it expires, and answers requests as promises. No dependencies: browsers, and Node >= 20
// (`--experimental-websocket`, or a WebSocket constructor passed in).
//
// The server's contract is CONTRACT.md §4; the guarantees this file keeps are listed in the
// README of this folder.

/** Close codes the server uses (CONTRACT §3, §4.4). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY: 1008,
  TOO_BIG: 1009,
  TRY_AGAIN: 1013,
  INVALID_TOKEN: 4001,
  TOKEN_EXPIRED: 4002,
  FORBIDDEN: 4003,
  UNKNOWN_STATION: 4004,
});

/** Closes after which reconnecting cannot help: the app must act (sign in, change station). */
const FINAL = new Set([CloseCode.INVALID_TOKEN, CloseCode.FORBIDDEN, CloseCode.UNKNOWN_STATION, CloseCode.TOO_BIG]);

/**
 * An error from the server (its `code` is the contract's: `not_found`, `forbidden`,
 * `no_battery_available`, …) or from the client itself: `timeout` (no answer in time),
 * `connection_lost` (the connection closed before the answer; the request may or may not have
 * been carried out), `closed` (the client was closed), `stopped` (the server refused the
 * connection for good: see `closeCode`).
 */
export class SwapcastError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "SwapcastError";
    this.code = code;
    Object.assign(this, details);
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first): "full jitter", uniform between
 * 0 and `min(max, base * 2^attempt)`, so clients dropped together do not come back together.
 */
export function backoffDelay(attempt, { base = 500, max = 30000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The WebSocket address of `path` on the server at `url` (http(s) or ws(s); a browser's own by default). */
function socketAddress(url, path, query) {
  const base = new URL(url ?? globalThis.location?.href ?? "http://localhost:8000");
  base.protocol = base.protocol === "https:" || base.protocol === "wss:" ? "wss:" : "ws:";
  const address = new URL(path, base);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) address.searchParams.set(name, String(value));
  }
  return address.toString();
}

/** Whether a seed endpoint (`/ws/stations/…`, `/ws/notifications/`) rather than `/ws`. */
function isMultiplexed(path) {
  return path.replace(/\/+$/, "") === "/ws";
}

export class SwapcastClient {
  /**
   * @param {object} options
   * @param {string} [options.url] the server (`https://swap.example.com`); a browser's own by default
   * @param {string} [options.path] `/ws` (default), or a seed feed such as `/ws/stations/12/`
   * @param {(why: {reason: "connect"|"renew"|"expired"}) => (string|null|Promise<string|null>)} [options.getToken]
   *   the access token to use; `expired` means the last one expired: refresh it. `null`: anonymous.
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket constructor (default: the global one)
   * @param {{base?: number, max?: number}} [options.backoff] reconnect delays, ms (500, 30000)
   * @param {number} [options.healthyAfter] ms a connection must stay up before the backoff resets (10000)
   * @param {number} [options.requestTimeout] ms before a request fails with `timeout` (10000)
   * @param {boolean} [options.renew] renew the token in place when told `token_expiring` (true)
   * @param {() => number} [options.random] the jitter's source (Math.random)
   */
  constructor(options = {}) {
    this.options = options;
    this.path = options.path ?? "/ws";
    this.multiplexed = isMultiplexed(this.path);
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocketImpl) throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: --experimental-websocket)");
    this.backoff = { base: 500, max: 30000, ...options.backoff };
    this.healthyAfter = options.healthyAfter ?? 10000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.random = options.random ?? Math.random;
    this.renew = options.renew ?? true;

    /** `idle` → `connecting` → `open` → (`reconnecting` → `connecting` → `open`)* → `closed` */
    this.state = "idle";
    this.listeners = new Map();
    /** Channel name → {position, handlers}: `position` is the newest event id delivered on it. */
    this.channels = new Map();
    /** The seed endpoint's one feed (its events have no `channel`). */
    this.feed = { position: null };
    this.pending = new Map();
    this.presenceWaiters = new Map();
    this.outbox = [];
    this.ready = false;
    this.attempt = 0;
    this.expiredInARow = 0;
    this.nextRequest = 1;
    this.socket = null;
    this.timers = new Set();
    this.healthyTimer = null;
    this.retryTimer = null;
    this.user = null;
    this.resumedFrom = null;
    this.onOnline = () => {
      if (this.retryTimer !== null) {
        this.clearTimer(this.retryTimer);
        this.retryTimer = null;
        this.open();
      }
    };
    globalThis.addEventListener?.("online", this.onOnline);
    if (options.autoConnect !== false) this.connect();
  }

  // ---- events ------------------------------------------------------------------------------

  /**
   * Listens for `state` (the new state), `open` (ready: signed in and resubscribed), `close`
   * ({code, reason, reconnectIn}), `event` (every message of every channel, in order), `error`
   * (a SwapcastError not tied to a request), `resume_expired` ({channel}: events were missed and
   * a snapshot follows — refetch what you derived from events), `stopped` ({code, reason}: will
   * not reconnect), `authenticated` (the server's message), `frame` ({direction: "in"|"out",
   * data}: every frame, for a console). Returns a function that stops listening.
   */
  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    return () => this.listeners.get(type)?.delete(listener);
  }

  emit(type, value) {
    for (const listener of [...(this.listeners.get(type) ?? [])]) {
      try {
        listener(value);
      } catch (e) {
        // An app's listener that throws must not break the connection for the others.
        setTimeout(() => { throw e; });
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  // ---- the connection ------------------------------------------------------------------------

  /** Opens the connection (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this.state === "closed") throw new SwapcastError("closed", "this client was closed");
    if (this.state === "idle") this.open();
  }

  /** Closes for good: no reconnect; pending requests fail with `closed`. */
  close() {
    if (this.state === "closed") return;
    this.setState("closed");
    globalThis.removeEventListener?.("online", this.onOnline);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.retryTimer = null;
    this.failPending(new SwapcastError("closed", "the client was closed"));
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      detach(socket);
      socket.close(CloseCode.NORMAL);
    }
  }

  later(ms, fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  clearTimer(timer) {
    if (timer === null) return;
    clearTimeout(timer);
    this.timers.delete(timer);
  }

  async token(reason) {
    if (!this.options.getToken) return null;
    return (await this.options.getToken({ reason })) ?? null;
  }

  async open(reason = "connect") {
    this.setState("connecting");
    this.ready = false;
    let token = null;
    try {
      token = await this.token(reason);
    } catch (e) {
      // The app could not give a token (its refresh failed): try again later, as for a drop.
      this.emit("error", new SwapcastError("token_unavailable", String(e?.message ?? e)));
      return this.scheduleReconnect({ code: 0, reason: "no token" });
    }
    if (this.state === "closed") return;
    const query = {};
    if (!this.multiplexed) {
      // Seed feeds take the token at connect only, and resume from the URL.
      query.token = token;
      query.last_event_id = this.feed.position;
    }
    const socket = new this.WebSocketImpl(socketAddress(this.options.url, this.path, query));
    this.socket = socket;
    this.pendingToken = token;
    socket.onmessage = (event) => this.received(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event);
    socket.onerror = () => {
      // A close follows, with the code that says what happened — except in Node 20, whose
      // WebSocket reports a connection that failed to open with an error alone: count it as
      // closed (1006) if no close came.
      this.later(250, () => {
        if (socket === this.socket && socket.readyState !== 1) this.closed(socket, { code: 1006, reason: "" });
      });
    };
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.ready = false;
    this.clearTimer(this.healthyTimer);
    this.healthyTimer = null;
    this.failPending(new SwapcastError("connection_lost", "the connection closed before the answer"));
    const code = event.code;
    if (FINAL.has(code)) {
      this.setState("closed");
      this.emit("close", { code, reason: event.reason, reconnectIn: null });
      this.emit("stopped", { code, reason: event.reason });
      return;
    }
    if (code === CloseCode.TOKEN_EXPIRED && this.expiredInARow < 3) {
      // Refresh and come back at once: the token, not the network, was the trouble.
      this.expiredInARow += 1;
      this.emit("close", { code, reason: event.reason, reconnectIn: 0 });
      this.setState("reconnecting");
      return this.open("expired");
    }
    this.scheduleReconnect({ code, reason: event.reason });
  }

  scheduleReconnect({ code, reason }) {
    if (this.state === "closed") return;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.setState("reconnecting");
    this.emit("close", { code, reason, reconnectIn: delay });
    this.retryTimer = this.later(delay, () => {
      this.retryTimer = null;
      this.open(code === CloseCode.TOKEN_EXPIRED ? "expired" : "connect");
    });
  }

  send(message) {
    const data = JSON.stringify(message);
    this.emit("frame", { direction: "out", data });
    this.socket.send(data);
  }

  /** Sends now if ready, else once the connection is (requests made while reconnecting wait). */
  sendWhenReady(message) {
    if (this.ready && this.socket) this.send(message);
    else this.outbox.push(message);
  }

  // ---- what arrives --------------------------------------------------------------------------

  received(socket, data) {
    if (socket !== this.socket) return;
    this.emit("frame", { direction: "in", data });
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return this.emit("error", new SwapcastError("invalid_frame", "the server sent something that is not JSON"));
    }
    if (message.type === "connection_established") return this.greeted(message);
    if (!this.multiplexed) return this.fromFeed(message);
    switch (message.type) {
      case "authenticated":
        return this.signedIn(message);
      case "auth_error":
        return this.authFailed(message);
      case "token_expiring":
        return this.renewToken();
      case "response":
        return this.answered(message.request_id, (p) => p.resolve(message.data));
      case "presence":
        if (!message.request_id) return this.presenceReply(message);
        break;
      case "error":
        return this.serverError(message);
      case "subscribed":
      case "pong":
        return;
      case "unsubscribed": {
        const state = this.channels.get(message.channel);
        if (state?.discarding) state.discarding = false;
        // `signed_in_again`: the token of another user came back from getToken; the client
        // starts over as that user itself (see signedIn) and keeps the channels.
        else if (message.reason && message.reason !== "signed_in_again") this.dropped(message);
        return;
      }
    }
    if (message.channel !== undefined) this.deliver(message.channel, message);
  }

  greeted(message) {
    this.setState("open");
    this.clearTimer(this.healthyTimer);
    // Only a connection that stays up resets the backoff: one that drops at once (a server
    // restarting, a proxy refusing) keeps backing off.
    this.healthyTimer = this.later(this.healthyAfter, () => {
      this.attempt = 0;
      this.healthyTimer = null;
    });
    if (!this.multiplexed) {
      this.expiredInARow = 0;
      if (this.feed.position === null) this.feed.position = message.last_event_id ?? null;
      this.becomeReady();
      return;
    }
    const token = this.pendingToken;
    if (token) {
      // Signs in in band (no token in the URL), resuming the automatic subscriptions from the
      // oldest position held: they replay from there and what was delivered already is skipped.
      const positions = [...this.channels.values()].map((c) => c.position).filter((p) => p !== null);
      this.resumedFrom = positions.length ? Math.min(...positions) : null;
      this.send({ type: "authenticate", token, last_event_id: this.resumedFrom ?? undefined });
    } else {
      this.resubscribe([]);
      this.becomeReady();
    }
  }

  signedIn(message) {
    this.expiredInARow = 0;
    const before = this.user;
    this.user = { id: message.user_id, role: message.role };
    this.emit("authenticated", message);
    if (this.ready) {
      if (before && before.id !== message.user_id) {
        // getToken gave another user's token: the server started that user's subscriptions
        // afresh. Start over, as that user, from the positions held.
        return this.restart();
      }
      return; // a renewal in place: the subscriptions stay as they are
    }
    this.resubscribe(message.subscriptions ?? []);
    this.becomeReady();
  }

  /** After a sign-in (or none): the channels the app wants and the server did not make, made;
   * the automatic ones it does not want, left. */
  resubscribe(automatic) {
    for (const channel of automatic) {
      const state = this.channels.get(channel);
      if (!state) {
        this.send({ type: "unsubscribe", channel });
      } else if (state.position === null && this.resumedFrom !== null) {
        // It never had its snapshot, but resumed with the others: make it again, from a
        // snapshot, and let nothing of the first one through.
        state.discarding = true;
        this.send({ type: "unsubscribe", channel });
        this.send({ type: "subscribe", channel });
      }
    }
    for (const [channel, state] of this.channels) {
      if (automatic.includes(channel)) continue;
      this.send({ type: "subscribe", channel, last_event_id: state.position ?? undefined });
    }
  }

  /** Drops the connection and opens a new one, resuming every channel. */
  restart() {
    const socket = this.socket;
    if (!socket) return;
    this.closed(socket, { code: CloseCode.GOING_AWAY, reason: "restart" });
    detach(socket);
    socket.close(CloseCode.NORMAL);
  }

  becomeReady() {
    this.ready = true;
    const queued = this.outbox;
    this.outbox = [];
    for (const message of queued) this.send(message);
    this.emit("open");
  }

  authFailed(message) {
    const error = new SwapcastError(message.code ?? "invalid_token", message.message);
    if (this.ready) {
      // A renewal was refused: the connection stands until the token expires (then 4002).
      return this.emit("error", error);
    }
    // Signing in was refused: a bad token will not get better by retrying.
    this.emit("stopped", { code: CloseCode.INVALID_TOKEN, reason: error.message });
    this.close();
  }

  async renewToken() {
    if (!this.renew || !this.options.getToken) return;
    const socket = this.socket;
    let token;
    try {
      token = await this.token("renew");
    } catch (e) {
      return this.emit("error", new SwapcastError("token_unavailable", String(e?.message ?? e)));
    }
    if (!token || socket !== this.socket || !this.ready) return;
    this.send({ type: "authenticate", token });
  }

  serverError(message) {
    if (message.request_id !== undefined) {
      const error = message.error ?? { code: message.code, message: message.message };
      return this.answered(message.request_id, (p) =>
        p.reject(new SwapcastError(error.code, error.message, { requestId: message.request_id, action: p.action })),
      );
    }
    const error = new SwapcastError(message.code ?? "error", message.message, { channel: message.channel });
    if (message.code === "resume_expired") {
      // The events since this channel's position are gone; a snapshot follows.
      const state = this.channels.get(message.channel);
      if (state) state.position = null;
      return this.emit("resume_expired", { channel: message.channel });
    }
    if (message.code === "rate_limited" || message.code === "invalid_last_event_id" || !message.channel) {
      return this.emit("error", error);
    }
    const waiters = this.presenceWaiters.get(message.channel);
    if (waiters?.length && !this.channels.get(message.channel)?.handlers.size) {
      return waiters.shift().reject(error);
    }
    // A subscription refused (forbidden, not_found, unknown_channel): not made again.
    const state = this.channels.get(message.channel);
    this.channels.delete(message.channel);
    for (const handler of state?.handlers ?? []) handler(message);
    this.emit("error", error);
  }

  dropped(message) {
    // The server took a subscription away (a role changed): it is not made again.
    const state = this.channels.get(message.channel);
    this.channels.delete(message.channel);
    for (const handler of state?.handlers ?? []) handler(message);
    this.emit("error", new SwapcastError(message.reason, message.message, { channel: message.channel }));
  }

  fromFeed(message) {
    if (message.type === "pong") return;
    if (message.type === "error") {
      if (message.code !== "resume_expired") return this.emit("error", new SwapcastError(message.code ?? "error", message.message));
      this.feed.position = null;
      return this.emit("resume_expired", { channel: null });
    }
    if (!advance(this.feed, message)) return;
    this.emit("event", message);
  }

  deliver(channel, message) {
    const state = this.channels.get(channel);
    // Automatic subscriptions the app did not ask for are left; their last messages are not its.
    if (!state || state.discarding) return;
    if (!advance(state, message)) return;
    for (const handler of state.handlers) handler(message);
    this.emit("event", message);
  }

  answered(requestId, settle) {
    const pending = this.pending.get(requestId);
    if (!pending) return; // timed out already
    this.pending.delete(requestId);
    this.clearTimer(pending.timer);
    settle(pending);
  }

  presenceReply(message) {
    const waiters = this.presenceWaiters.get(message.channel);
    waiters?.shift()?.resolve(message);
  }

  failPending(error) {
    for (const [id, pending] of this.pending) {
      this.clearTimer(pending.timer);
      pending.reject(new SwapcastError(error.code, error.message, { requestId: id, action: pending.action }));
    }
    this.pending.clear();
    for (const waiters of this.presenceWaiters.values()) {
      for (const waiter of waiters) waiter.reject(new SwapcastError(error.code, error.message));
    }
    this.presenceWaiters.clear();
    this.outbox = this.outbox.filter((m) => m.type !== "request" && m.type !== "presence");
  }

  // ---- what the app asks ---------------------------------------------------------------------

  /**
   * Watches a channel (`stations`, `station:12`, `notifications`, `system`): `handler` gets its
   * snapshot (or, after a reconnect, the events missed), its events in order, each once, and its
   * notices (`viewer_joined`, …). Returns a function that unsubscribes.
   */
  subscribe(channel, handler = () => {}) {
    if (!this.multiplexed) throw new SwapcastError("not_multiplexed", "a seed feed has one channel: use on('event')");
    let state = this.channels.get(channel);
    if (!state) {
      state = { position: null, handlers: new Set() };
      this.channels.set(channel, state);
      if (this.ready && this.socket) this.send({ type: "subscribe", channel });
    }
    state.handlers.add(handler);
    return () => {
      const current = this.channels.get(channel);
      if (current !== state) return;
      state.handlers.delete(handler);
      if (state.handlers.size) return;
      this.channels.delete(channel);
      if (this.ready && this.socket) this.send({ type: "unsubscribe", channel });
    };
  }

  /** A request (`book_battery`, `announce`, …): resolves with its `data`, rejects with a SwapcastError. */
  request(action, data = {}, { timeout = this.requestTimeout } = {}) {
    if (this.state === "closed") return Promise.reject(new SwapcastError("closed", "the client was closed"));
    if (!this.multiplexed) return Promise.reject(new SwapcastError("not_multiplexed", "requests need /ws"));
    const id = `r${this.nextRequest++}`;
    return new Promise((resolve, reject) => {
      const timer = this.later(timeout, () => {
        this.pending.delete(id);
        this.outbox = this.outbox.filter((m) => m.request_id !== id);
        reject(new SwapcastError("timeout", `no answer to ${action} within ${timeout} ms`, { requestId: id, action }));
      });
      this.pending.set(id, { resolve, reject, timer, action });
      this.sendWhenReady({ type: "request", request_id: id, action, data });
    });
  }

  /** Who watches a station (`station:12`): `{viewers, signed_in?}` as the caller may see it. */
  presence(channel, { timeout = this.requestTimeout } = {}) {
    if (this.state === "closed") return Promise.reject(new SwapcastError("closed", "the client was closed"));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      const done = (settle) => (value) => {
        this.clearTimer(timer);
        settle(value);
      };
      waiter.resolve = done(resolve);
      waiter.reject = done(reject);
      const timer = this.later(timeout, () => {
        const waiters = this.presenceWaiters.get(channel) ?? [];
        const at = waiters.indexOf(waiter);
        if (at >= 0) waiters.splice(at, 1);
        reject(new SwapcastError("timeout", `no presence for ${channel} within ${timeout} ms`));
      });
      if (!this.presenceWaiters.has(channel)) this.presenceWaiters.set(channel, []);
      this.presenceWaiters.get(channel).push(waiter);
      this.sendWhenReady({ type: "presence", channel });
    });
  }

  /** Sends `text` as it is — a console's way to try what the client would not send. False if not connected. */
  sendRaw(text) {
    if (!this.socket || this.socket.readyState !== 1) return false;
    this.emit("frame", { direction: "out", data: text });
    this.socket.send(text);
    return true;
  }

  /** Tells everyone at a station (staff only): the `station_announcement` event. */
  announce(stationId, message, level) {
    return this.request("announce", { station_id: stationId, message, level });
  }
}

/** Moves a channel's position past `message`; false for an event it delivered already. */
function advance(state, message) {
  if (message.action === "snapshot") {
    if (typeof message.last_event_id === "number") state.position = Math.max(state.position ?? 0, message.last_event_id);
    return true;
  }
  if (typeof message.event_id !== "number") return true; // a notice: no position
  if (state.position !== null && message.event_id <= state.position) return false;
  state.position = message.event_id;
  return true;
}

function detach(socket) {
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = null;
}
