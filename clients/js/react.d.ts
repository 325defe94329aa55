// Types of react.js, checked by `npm test` (tsc against test/types.ts).

import type { ChannelMessage, ClientOptions, SwapcastClient } from "./swapcast.js";

export interface Inventory {
  available: number;
  booked: number;
  total: number;
}

export interface StationWebSocket<I> {
  /** The station's counts (every station's, by id, when no station is given); null until the snapshot. */
  inventory: I | null;
  isConnected: boolean;
  /** The last events, oldest first (snapshots excluded). */
  events: ChannelMessage[];
  lastEvent: ChannelMessage | null;
  /** Events were missed for good (older than the server keeps): refetch what you derived from them. */
  resumeExpired: boolean;
  error: (Error & { code?: string | number }) | null;
}

export interface HookOptions extends ClientOptions {
  /** A client to share between hooks (one connection); else the hook makes its own. */
  client?: SwapcastClient;
  /** How many events `events` keeps (50). */
  keep?: number;
}

export declare function useStationWebSocket(stationId: number, options?: HookOptions): StationWebSocket<Inventory>;
export declare function useStationWebSocket(
  stationId: null | undefined,
  options?: HookOptions,
): StationWebSocket<Record<number, Inventory>>;
/** A station that may not be chosen yet: one station's counts, or every station's by id. */
export declare function useStationWebSocket(
  stationId: number | null | undefined,
  options?: HookOptions,
): StationWebSocket<Inventory | Record<number, Inventory>>;
