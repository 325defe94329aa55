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
const FINAL = new Set([CloseCode.INVALID_TOKEN, CloseCode.FORBIDDEN, CloseCode.UNKNOWN_STATION]);

/** Channels that open with no snapshot: their position starts where the connection did. */
const SNAPSHOTLESS = new Set(["notifications", "system"]);

/** How an app's listener that threw is reported: as the browser reports an uncaught error
 * (without stopping anything), else on the console — never by throwing into the client. */
function reportListenerError(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error("swapcast: a listener threw", error);
}

/** Calls an app's listener; one that throws does not keep the message from the others. */
function call(listener, value) {
  try {
    listener(value);
  } catch (error) {
    reportListenerError(error);
  }
}

/**
 * An error from the server (its `code` is the contract's: `not_found`, `forbidden`,
 * `no_battery_available`, …) or from the client itself: `timeout` (no answer in time),
 * `connection_lost` (the connection closed after the request was sent and before its answer: it
 * may or may not have been carried out), `closed` (the client was closed), `stopped` (the server
 * refused the connection for good before the request could be sent: see `closeCode`), `too_big`
 * (over the server's frame limit: never sent).
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
   * @param {number} [options.heartbeat] ms of silence before the client pings (15000; 0: never)
   * @param {number} [options.heartbeatTimeout] ms after that with still nothing heard before the
   *   connection is taken for dead and made again (10000)
   * @param {{perSecond?: number, burst?: number}} [options.rateLimit] the pace of what the client
   *   sends, under the server's limit (18 a second, bursts of 36; the server's default is 20 and 40)
   * @param {number} [options.maxFrame] the server's frame limit, bytes (65536): a larger request
   *   is refused here (`too_big`) rather than closing the connection
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
    this.heartbeat = options.heartbeat ?? 15000;
    this.heartbeatTimeout = options.heartbeatTimeout ?? 10000;
    this.rateLimit = { perSecond: 18, burst: 36, ...options.rateLimit };
    this.maxFrame = options.maxFrame ?? 65536;

    /** `idle` → `connecting` → `open` → (`reconnecting` → `connecting` → `open`)* → `closed` */
    this.state = "idle";
    this.listeners = new Map();
    /** Channel name → {position, handlers, confirmed, latest}: `position` is the newest event id
     * delivered on it; `confirmed` once the server said this connection's subscription began
     * (what comes before belongs to an earlier one); `latest` each station's newest counts, for
     * a handler that joins after the snapshot. */
    this.channels = new Map();
    /** The seed endpoint's one feed (its events have no `channel`). */
    this.feed = { position: null };
    this.pending = new Map();
    /** What waits for the connection to be ready (requests, presence). */
    this.outbox = [];
    /** What waits for the pace (see `rateLimit`), in order; `budget` what may go at once. */
    this.paced = [];
    this.budget = { tokens: 0, at: 0 };
    this.paceTimer = null;
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
    /** The newest event id when this connection began (the greeting's). */
    this.startedAt = null;
    /** The token the server holds for this connection, and whether the last one expired (the
     * next one asked for is then a refresh: reason `expired`). */
    this.token = null;
    this.tokenStale = false;
    /** Set once the client stopped for good: the close code. */
    this.stoppedWith = null;
    this.heardAt = 0;
    this.heartbeatTimer = null;
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
    for (const listener of [...(this.listeners.get(type) ?? [])]) call(listener, value);
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

  /** Closes for good: no reconnect; pending requests fail with `closed` (`connection_lost` if sent). */
  close() {
    if (this.state === "closed") return;
    this.shutDown(new SwapcastError("closed", "the client was closed"));
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

  /** Asks the app for a token: a non-empty string, or null/undefined for none (anonymous). */
  async askToken(reason) {
    if (!this.options.getToken) return null;
    const token = (await this.options.getToken({ reason })) ?? null;
    if (token !== null && (typeof token !== "string" || token === "")) {
      throw new TypeError(`getToken must give a non-empty string or null, not ${JSON.stringify(token)}`);
    }
    return token;
  }

  async open(reason = "connect") {
    this.setState("connecting");
    this.ready = false;
    let token = null;
    try {
      // After an expiry every attempt asks for a refresh until a sign-in succeeds.
      token = await this.askToken(this.tokenStale ? "expired" : reason);
    } catch (e) {
      // The app could not give a token (its refresh failed): try again later, as for a drop.
      if (this.state === "closed") return;
      this.emit("error", new SwapcastError("token_unavailable", String(e?.message ?? e)));
      return this.scheduleReconnect({ code: 0, reason: "no token" }, { announce: false });
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
    this.watchSilence();
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
    this.clearTimer(this.heartbeatTimer);
    this.heartbeatTimer = null;
    this.unpace();
    // What was sent may or may not have been done; what waits still waits for the next connection.
    this.failSent(new SwapcastError("connection_lost", "the connection closed before the answer"));
    const code = event.code;
    if (FINAL.has(code)) return this.stop(code, event.reason);
    if (code === CloseCode.TOKEN_EXPIRED) this.tokenStale = true;
    if (code === CloseCode.TOKEN_EXPIRED && this.expiredInARow < 3) {
      // Refresh and come back at once: the token, not the network, was the trouble.
      this.expiredInARow += 1;
      this.emit("close", { code, reason: event.reason, reconnectIn: 0 });
      this.setState("reconnecting");
      return this.open("expired");
    }
    this.scheduleReconnect({ code, reason: event.reason });
  }

  /** Stops for good (the server refused the connection or the token): nothing is retried. */
  stop(code, reason) {
    this.stoppedWith = code;
    const stopped = new SwapcastError("stopped", `the server refused the connection (${code}): ${reason}`, { closeCode: code });
    this.emit("close", { code, reason, reconnectIn: null });
    this.emit("stopped", { code, reason });
    this.shutDown(stopped);
  }

  /** `announce`: whether a connection closed (a `close` event); not when none was made. */
  scheduleReconnect({ code, reason }, { announce = true } = {}) {
    if (this.state === "closed") return;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.setState("reconnecting");
    if (announce) this.emit("close", { code, reason, reconnectIn: delay });
    this.retryTimer = this.later(delay, () => {
      this.retryTimer = null;
      this.open();
    });
  }

  /** Sends at the pace of `rateLimit`: the server answers a burst beyond its limit with
   * `rate_limited` and drops the message (a resubscription of many channels would lose some). */
  send(message) {
    if (this.paced.length === 0 && this.take()) return this.transmit(message);
    this.paced.push(message);
    this.schedulePace();
  }

  transmit(message) {
    const data = JSON.stringify(message);
    this.emit("frame", { direction: "out", data });
    if (message.type === "request" || message.type === "presence") {
      const pending = this.pending.get(message.request_id);
      if (pending) pending.sent = true;
    }
    this.socket.send(data);
  }

  /** Takes one message's worth of the budget, refilled at `perSecond` up to `burst`. */
  take() {
    const now = Date.now();
    const { perSecond, burst } = this.rateLimit;
    this.budget.tokens = Math.min(burst, this.budget.tokens + ((now - this.budget.at) * perSecond) / 1000);
    this.budget.at = now;
    if (this.budget.tokens < 1) return false;
    this.budget.tokens -= 1;
    return true;
  }

  schedulePace() {
    if (this.paceTimer !== null) return;
    const wait = Math.ceil(1000 / this.rateLimit.perSecond);
    this.paceTimer = this.later(wait, () => {
      this.paceTimer = null;
      if (!this.socket) return;
      while (this.paced.length && this.take()) this.transmit(this.paced.shift());
      if (this.paced.length) this.schedulePace();
    });
  }

  /** The connection is gone: requests not sent yet wait for the next one (in front, in their
   * order); the rest (subscriptions, renewals) is made again by the next connection itself. */
  unpace() {
    this.clearTimer(this.paceTimer);
    this.paceTimer = null;
    const waiting = this.paced.filter((m) => m.type === "request" || m.type === "presence");
    this.paced = [];
    this.outbox = [...waiting, ...this.outbox];
  }

  /** Sends now if ready, else once the connection is (requests made while reconnecting wait). */
  sendWhenReady(message) {
    if (this.ready && this.socket) this.send(message);
    else this.outbox.push(message);
  }

  // ---- what arrives --------------------------------------------------------------------------

  received(socket, data) {
    if (socket !== this.socket) return;
    this.heardAt = Date.now();
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
        return this.answered(message.request_id, (p) => p.resolve(message));
      case "error":
        return this.serverError(message);
      case "subscribed":
        return this.confirmed(message.channel);
      case "pong":
        return;
      case "unsubscribed":
        // Without a reason: the answer to the client's own unsubscribe. `signed_in_again`: the
        // token of another user came back from getToken; the client starts over as that user
        // (see signedIn) and keeps the channels.
        if (message.reason && message.reason !== "signed_in_again") this.dropped(message);
        return;
    }
    if (message.channel !== undefined) this.deliver(message.channel, message);
  }

  greeted(message) {
    this.setState("open");
    this.budget = { tokens: this.rateLimit.burst, at: Date.now() };
    this.startedAt = typeof message.last_event_id === "number" ? message.last_event_id : null;
    this.clearTimer(this.healthyTimer);
    // Only a connection that stays up resets the backoff: one that drops at once (a server
    // restarting, a proxy refusing) keeps backing off.
    this.healthyTimer = this.later(this.healthyAfter, () => {
      this.attempt = 0;
      this.healthyTimer = null;
    });
    if (!this.multiplexed) {
      this.expiredInARow = 0;
      this.tokenStale = false;
      if (this.feed.position === null) this.feed.position = message.last_event_id ?? null;
      this.becomeReady();
      return;
    }
    for (const state of this.channels.values()) state.confirmed = false;
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
    this.tokenStale = false;
    this.token = this.pendingToken;
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
      } else if (state.position === null && this.resumedFrom !== null && !SNAPSHOTLESS.has(channel)) {
        // It never had its snapshot, but resumed with the others: make it again, from a
        // snapshot; nothing of the first one gets through (it is confirmed by `subscribed`).
        this.send({ type: "unsubscribe", channel });
        this.send({ type: "subscribe", channel });
      } else {
        this.confirmed(channel);
      }
    }
    for (const [channel, state] of this.channels) {
      if (automatic.includes(channel)) continue;
      this.send({ type: "subscribe", channel, last_event_id: state.position ?? undefined });
    }
  }

  /** The server began this connection's subscription to `channel`: what it sends for the channel
   * from now on is this subscription's. A channel with no snapshot starts where the connection
   * did, so that a reconnect resumes it from there (and loses nothing sent meanwhile). */
  confirmed(channel) {
    const state = this.channels.get(channel);
    if (!state) return;
    state.confirmed = true;
    if (state.position === null && SNAPSHOTLESS.has(channel)) state.position = this.startedAt;
  }

  /** Drops the connection and opens a new one, resuming every channel. */
  restart(event = { code: CloseCode.GOING_AWAY, reason: "restart" }) {
    const socket = this.socket;
    if (!socket) return;
    this.closed(socket, event);
    detach(socket);
    socket.close(CloseCode.NORMAL);
  }

  /** Pings after `heartbeat` of silence; with nothing heard `heartbeatTimeout` later, takes the
   * connection for dead (a network that drops everything closes nothing) and makes it again. */
  watchSilence() {
    this.heardAt = Date.now();
    this.clearTimer(this.heartbeatTimer);
    this.heartbeatTimer = null;
    if (!(this.heartbeat > 0)) return; // `heartbeat: 0`: off
    const tick = Math.max(50, Math.min(this.heartbeat, this.heartbeatTimeout) / 2);
    // The silence a ping was sent for (it began when the last frame was heard): one ping each.
    let pingedFor = null;
    const check = () => {
      this.heartbeatTimer = null;
      if (!this.socket) return;
      const silent = Date.now() - this.heardAt;
      if (silent >= this.heartbeat + this.heartbeatTimeout) {
        return this.restart({ code: 1006, reason: "no answer to a ping" });
      }
      if (silent >= this.heartbeat && pingedFor !== this.heardAt && this.socket.readyState === 1) {
        pingedFor = this.heardAt;
        this.send({ type: "ping" });
      }
      this.heartbeatTimer = this.later(tick, check);
    };
    this.heartbeatTimer = this.later(tick, check);
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
    if (error.code === "token_expired") {
      // The token expired while the client was away: refresh it and come back, as after 4002.
      return this.restart({ code: CloseCode.TOKEN_EXPIRED, reason: error.message });
    }
    // Signing in was refused: a bad token will not get better by retrying.
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      detach(socket);
      socket.close(CloseCode.NORMAL);
    }
    this.stop(CloseCode.INVALID_TOKEN, error.message);
  }

  async renewToken() {
    if (!this.renew || !this.options.getToken) return;
    const socket = this.socket;
    let token;
    try {
      token = await this.askToken("renew");
    } catch (e) {
      return this.emit("error", new SwapcastError("token_unavailable", String(e?.message ?? e)));
    }
    // The same token again renews nothing (the server would close at its `exp` all the same).
    if (!token || token === this.token || socket !== this.socket || !this.ready) return;
    this.pendingToken = token;
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
      if (state) {
        state.position = SNAPSHOTLESS.has(message.channel) ? this.startedAt : null;
        state.latest.clear();
      }
      return this.emit("resume_expired", { channel: message.channel });
    }
    if (message.code === "rate_limited" || message.code === "invalid_last_event_id" || !message.channel) {
      return this.emit("error", error);
    }
    const asked = [...this.pending.entries()].find(([, p]) => p.presenceOf === message.channel && p.sent);
    if (asked && !this.channels.get(message.channel)?.handlers.size) {
      // A presence question refused (a refusal carries no request_id): the oldest one asked.
      return this.answered(asked[0], (p) => p.reject(error));
    }
    // A subscription refused (forbidden, not_found, unknown_channel): not made again.
    const state = this.channels.get(message.channel);
    this.channels.delete(message.channel);
    for (const handler of state?.handlers ?? []) call(handler, message);
    this.emit("error", error);
  }

  dropped(message) {
    // The server took a subscription away (a role changed): it is not made again.
    const state = this.channels.get(message.channel);
    this.channels.delete(message.channel);
    for (const handler of state?.handlers ?? []) call(handler, message);
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
    // Channels the app did not ask for (automatic subscriptions it left), and what an earlier
    // subscription still had on the way, are not its.
    if (!state || !state.confirmed) return;
    if (!advance(state, message)) return;
    if (message.type === "inventory_update" && typeof message.station_id === "number") {
      state.latest.set(message.station_id, message);
    }
    for (const handler of [...state.handlers]) {
      this.pay(state, handler);
      call(handler, message);
    }
    this.emit("event", message);
  }

  /** Gives a handler that joined late the snapshot it is owed, once. */
  pay(state, handler) {
    const owed = state.owed.get(handler);
    if (!owed) return;
    state.owed.delete(handler);
    for (const message of owed) call(handler, message);
  }

  answered(requestId, settle) {
    const pending = this.pending.get(requestId);
    if (!pending) return; // timed out already: a late answer is dropped
    this.pending.delete(requestId);
    this.clearTimer(pending.timer);
    settle(pending);
  }

  /** The connection closed: what was sent fails with `error`; what was not waits on. */
  failSent(error) {
    for (const [id, pending] of this.pending) {
      if (!pending.sent) continue;
      this.pending.delete(id);
      this.clearTimer(pending.timer);
      pending.reject(new SwapcastError(error.code, error.message, { requestId: id, action: pending.action }));
    }
  }

  /** Ends the client: no more connections; every request fails — one already sent with
   * `connection_lost` (it may have been done), the others with `error`. */
  shutDown(error) {
    this.setState("closed");
    globalThis.removeEventListener?.("online", this.onOnline);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.retryTimer = null;
    this.paceTimer = null;
    this.heartbeatTimer = null;
    this.healthyTimer = null;
    this.failSent(new SwapcastError("connection_lost", "the connection closed before the answer"));
    for (const [id, pending] of this.pending) {
      this.clearTimer(pending.timer);
      pending.reject(new SwapcastError(error.code, error.message, { requestId: id, action: pending.action, closeCode: error.closeCode }));
    }
    this.pending.clear();
    this.outbox = [];
    this.paced = [];
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
      state = { position: null, handlers: new Set(), confirmed: false, latest: new Map(), owed: new Map() };
      this.channels.set(channel, state);
      if (this.ready && this.socket) this.send({ type: "subscribe", channel });
    } else if (state.latest.size && !state.handlers.has(handler)) {
      // The channel's snapshot (or some of it) went by already: this handler is owed one of its
      // own, made now of each station's newest counts — paid before the next message of the
      // channel reaches it, or soon after subscribe returns if none comes first.
      const owed = [...state.latest.values()].map(({ event_id: _, ...counts }) => ({
        ...counts,
        action: "snapshot",
        last_event_id: state.position,
      }));
      state.owed.set(handler, owed);
      queueMicrotask(() => this.pay(state, handler));
    }
    state.handlers.add(handler);
    return () => {
      const current = this.channels.get(channel);
      if (current !== state) return;
      state.handlers.delete(handler);
      state.owed.delete(handler);
      if (state.handlers.size) return;
      this.channels.delete(channel);
      if (this.ready && this.socket) this.send({ type: "unsubscribe", channel });
    };
  }

  /** A request (`book_battery`, `announce`, …): resolves with its `data`, rejects with a SwapcastError. */
  request(action, data = {}, { timeout = this.requestTimeout } = {}) {
    return this.ask({ type: "request", action, data }, timeout, `${action}`, { action });
  }

  /** Who watches a station (`station:12`): `{viewers, signed_in?}` as the caller may see it. */
  presence(channel, { timeout = this.requestTimeout } = {}) {
    return this.ask({ type: "presence", channel }, timeout, `presence of ${channel}`, { presenceOf: channel });
  }

  /** Sends a question with a request_id and waits for the answer that carries it. */
  ask(message, timeout, what, details) {
    if (this.state === "closed") {
      const code = this.stoppedWith === null ? "closed" : "stopped";
      return Promise.reject(new SwapcastError(code, "the client was closed", { closeCode: this.stoppedWith ?? undefined }));
    }
    if (!this.multiplexed) return Promise.reject(new SwapcastError("not_multiplexed", `${what} needs /ws`));
    const id = `r${this.nextRequest++}`;
    const framed = { ...message, request_id: id };
    const size = new TextEncoder().encode(JSON.stringify(framed)).length;
    if (size > this.maxFrame) {
      return Promise.reject(new SwapcastError("too_big", `${what} is ${size} bytes, over the server's ${this.maxFrame}`, { requestId: id, ...details }));
    }
    return new Promise((resolve, reject) => {
      const timer = this.later(timeout, () => {
        this.pending.delete(id);
        this.outbox = this.outbox.filter((m) => m.request_id !== id);
        this.paced = this.paced.filter((m) => m.request_id !== id);
        reject(new SwapcastError("timeout", `no answer to ${what} within ${timeout} ms`, { requestId: id, ...details }));
      });
      this.pending.set(id, { resolve, reject, timer, sent: false, ...details });
      this.sendWhenReady(framed);
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
