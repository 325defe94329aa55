// React bindings: `useStationWebSocket(stationId)` with the shape of the Battery Swap document's
// hook (`inventory`, `isConnected`), built on the client — so it resumes, renews and backs off
// like every other user of it.

import { useEffect, useState } from "react";

import { SwapcastClient } from "./swapcast.js";

/** The counts a station's messages carry, as the document's hook kept them. */
function countsOf(message) {
  if (typeof message.available_batteries !== "number") return null;
  return {
    available: message.available_batteries,
    booked: message.booked_batteries,
    total: message.total_batteries,
  };
}

/**
 * Watches one station (`station:{id}`), or every station when `stationId` is null/undefined
 * (`stations`: `inventory` is then keyed by station id).
 *
 * @param {number|null|undefined} stationId
 * @param {object} [options] a `client` to share (one connection for many hooks), or the
 *   options of a client of the hook's own (`url`, `getToken`, …); `keep`: how many events to
 *   keep in `events` (50)
 * @returns {{inventory, isConnected: boolean, events: object[], lastEvent: object|null,
 *   resumeExpired: boolean, error: Error|null}}
 */
export function useStationWebSocket(stationId, options = {}) {
  const all = stationId === null || stationId === undefined;
  const channel = all ? "stations" : `station:${stationId}`;
  // Everything the hook shows belongs to one channel: after a change of station, what was
  // kept for the last one is not shown, not even for the one render before the effect runs.
  const blank = { channel, inventory: null, events: [], resumeExpired: false, error: null };
  const [view, setView] = useState(blank);
  const [isConnected, setIsConnected] = useState(false);
  const shared = options.client;

  useEffect(() => {
    const own = !shared;
    const client = shared ?? new SwapcastClient(options);
    const keep = Math.max(0, options.keep ?? 50);
    // Changes to this channel's view; none once the hook moved on to another.
    const update = (change) => setView((before) => (before.channel === channel ? { ...before, ...change(before) } : before));
    setView({ channel, inventory: null, events: [], resumeExpired: false, error: null });
    setIsConnected(client.ready);
    const offs = [
      client.on("open", () => setIsConnected(true)),
      client.on("close", () => setIsConnected(false)),
      client.on("stopped", ({ code, reason }) =>
        update(() => ({ error: Object.assign(new Error(reason || `closed ${code}`), { code }) })),
      ),
      client.on("resume_expired", ({ channel: expired }) => expired === channel && update(() => ({ resumeExpired: true }))),
    ];
    const unsubscribe = client.subscribe(channel, (message) => {
      if (message.type === "error") {
        return update(() => ({ error: Object.assign(new Error(message.message), { code: message.code }) }));
      }
      const counts = countsOf(message);
      if (counts) {
        update((before) => ({ inventory: all ? { ...before.inventory, [message.station_id]: counts } : counts }));
      }
      if (message.action !== "snapshot" && keep > 0) {
        update((before) => ({ events: [...before.events, message].slice(-keep) }));
      }
    });
    return () => {
      unsubscribe();
      offs.forEach((off) => off());
      if (own) client.close();
    };
    // A client of the hook's own is made once per station; its options are read then.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [stationId, shared]);

  const shown = view.channel === channel ? view : blank;
  return {
    inventory: shown.inventory,
    isConnected,
    events: shown.events,
    lastEvent: shown.events.at(-1) ?? null,
    resumeExpired: shown.resumeExpired,
    error: shown.error,
  };
}
