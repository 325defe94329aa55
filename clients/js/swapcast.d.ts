// Types of swapcast.js, checked by `npm test` (tsc against test/types.ts).

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  POLICY: 1008;
  TOO_BIG: 1009;
  TRY_AGAIN: 1013;
  INVALID_TOKEN: 4001;
  TOKEN_EXPIRED: 4002;
  FORBIDDEN: 4003;
  UNKNOWN_STATION: 4004;
}>;

/** The contract's error codes, and the client's own (`timeout`, `connection_lost`, `closed`, …). */
export type ErrorCode =
  // The server's (CONTRACT §6 and the README's error table).
  | "not_found"
  | "forbidden"
  | "not_authenticated"
  | "invalid_token"
  | "token_expired"
  | "account_disabled"
  | "validation_failed"
  | "malformed_json"
  | "payload_too_large"
  | "conflict"
  | "no_battery_available"
  | "booking_limit_reached"
  | "invalid_booking_state"
  | "invalid_battery_state"
  | "invalid_station_state"
  | "station_unavailable"
  | "battery_retired"
  | "serial_taken"
  | "rate_limited"
  | "unknown_channel"
  | "resume_expired"
  | "invalid_last_event_id"
  | "too_many_attempts"
  | "request_timeout"
  | "internal_error"
  | "service_unavailable"
  // The client's own.
  | "timeout"
  | "connection_lost"
  | "closed"
  | "not_multiplexed"
  | "token_unavailable"
  | "invalid_frame"
  | "stopped"
  | "too_big"
  | (string & {});

export declare class SwapcastError extends Error {
  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>);
  readonly name: "SwapcastError";
  readonly code: ErrorCode;
  /** Set for a request's error. */
  readonly requestId?: string;
  readonly action?: string;
  /** Set for a channel's error. */
  readonly channel?: string;
  /** Set for `stopped`: the close code with which the server refused the connection. */
  readonly closeCode?: number;
}

export interface Backoff {
  /** The first ceiling, ms (500). */
  base?: number;
  /** The largest ceiling, ms (30000). */
  max?: number;
}

export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;

export type TokenReason = "connect" | "renew" | "expired";

export interface ClientOptions {
  /** The server (`https://swap.example.com`); a browser's own page by default. */
  url?: string;
  /** `/ws` (default) or a seed feed: `/ws/stations/`, `/ws/stations/12/`, `/ws/notifications/`. */
  path?: string;
  /** The access token to use; `expired`: the last one expired, refresh it. `null`: anonymous. */
  getToken?: (why: { reason: TokenReason }) => string | null | undefined | Promise<string | null | undefined>;
  /** A WebSocket constructor (default: the global one). */
  WebSocket?: unknown;
  backoff?: Backoff;
  /** How long a connection must stay up before the backoff starts again from `base` (10000 ms). */
  healthyAfter?: number;
  /** How long a request waits for its answer (10000 ms). */
  requestTimeout?: number;
  /** Renew the token in place when the server says `token_expiring` (true). */
  renew?: boolean;
  /** The jitter's source (Math.random). */
  random?: () => number;
  /** Connect in the constructor (true). */
  autoConnect?: boolean;
  /** ms of silence before the client pings (15000); 0 turns the heartbeat off. */
  heartbeat?: number;
  /** ms after that, with still nothing heard, before the connection is taken for dead and made again (10000). */
  heartbeatTimeout?: number;
  /** The pace of what the client sends, under the server's limit (18 a second, bursts of 36). */
  rateLimit?: { perSecond?: number; burst?: number };
  /** The server's frame limit in bytes (65536): a larger request fails with `too_big`, unsent. */
  maxFrame?: number;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A message of a channel: a snapshot, an event (with `event_id`), or a notice. */
export interface ChannelMessage {
  type: string;
  channel?: string;
  event_id?: number;
  action?: string;
  station_id?: number;
  last_event_id?: number;
  [field: string]: unknown;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** ms until the next attempt; 0: at once; null: not reconnecting. */
  reconnectIn: number | null;
}

export interface SignedInViewer {
  user_id: number;
  display_name: string;
  role: "admin" | "operator" | "user";
  since: string;
}

export interface Presence {
  type: "presence";
  channel: string;
  viewers: number;
  signed_in?: SignedInViewer[];
}

export interface ClientEvents {
  state: ClientState;
  open: undefined;
  close: CloseInfo;
  event: ChannelMessage;
  error: SwapcastError;
  resume_expired: { channel: string | null };
  stopped: { code: number; reason: string };
  authenticated: { type: "authenticated"; user_id: number; role: string; subscriptions: string[] };
  frame: { direction: "in" | "out"; data: string };
}

export declare class SwapcastClient {
  constructor(options?: ClientOptions);
  readonly state: ClientState;
  /** Signed in (or anonymous) and resubscribed: requests go out at once. */
  readonly ready: boolean;
  readonly user: { id: number; role: string } | null;
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  connect(): void;
  close(): void;
  /** Watches a channel; returns the function that unsubscribes. */
  subscribe(channel: string, handler?: (message: ChannelMessage) => void): () => void;
  request<T = any>(action: string, data?: Record<string, unknown>, options?: { timeout?: number }): Promise<T>;
  presence(channel: string, options?: { timeout?: number }): Promise<Presence>;
  /** Sends text as it is (a console's escape hatch); false if not connected. */
  sendRaw(text: string): boolean;
  announce(stationId: number, message: string, level?: "info" | "success" | "warning" | "error"): Promise<unknown>;
}
