// Compiled by `npm test` with `tsc --noEmit --strict`: the declarations are valid and describe
// how the client is used (a wrong call here fails the build).
import { SwapcastClient, SwapcastError, CloseCode, backoffDelay, type ChannelMessage, type Presence } from "../swapcast.js";
import { useStationWebSocket, type Inventory } from "../react.js";

const client = new SwapcastClient({
  url: "https://swap.example.com",
  getToken: async ({ reason }) => (reason === "expired" ? "fresh" : "token"),
  backoff: { base: 250, max: 10_000 },
});
const off: () => void = client.on("close", ({ code, reconnectIn }) => {
  const again: number | null = reconnectIn;
  if (code === CloseCode.TOKEN_EXPIRED) void again;
});
off();
client.on("resume_expired", ({ channel }) => channel?.startsWith("station:"));
const unsubscribe = client.subscribe("station:12", (message: ChannelMessage) => message.event_id);
unsubscribe();
const booked: Promise<{ id: number }> = client.request<{ id: number }>("book_battery", { station_id: 12 });
booked.catch((e: unknown) => e instanceof SwapcastError && e.code === "no_battery_available");
const watching: Promise<Presence> = client.presence("station:12");
void watching.then((p) => p.viewers + (p.signed_in?.length ?? 0));
void client.announce(12, "Closed for maintenance in 10 minutes", "warning");
const delay: number = backoffDelay(3);
void delay;

function Station({ id }: { id: number }) {
  const { inventory, isConnected, lastEvent } = useStationWebSocket(id, { client });
  const counts: Inventory | null = inventory;
  return [counts?.available, isConnected, lastEvent?.type];
}
function Network() {
  const { inventory } = useStationWebSocket(null);
  return inventory?.[12]?.total;
}
void Station;
void Network;
function Maybe({ id }: { id?: number | null }) {
  // A station not chosen yet: one station's counts, or every station's.
  const { inventory, error } = useStationWebSocket(id, { client, keep: 0 });
  return [inventory, error?.code];
}
void Maybe;
const tuned = new SwapcastClient({
  heartbeat: 5000,
  heartbeatTimeout: 5000,
  rateLimit: { perSecond: 10, burst: 20 },
  maxFrame: 1 << 20,
});
tuned.request("list_stations").catch((e: SwapcastError) => e.code === "stopped" && e.closeCode === CloseCode.INVALID_TOKEN);
