// A scripted hub for the tests of what a real hub cannot be made to do on cue (refuse, answer
// late, put a view and events in one frame): a real WebSocket server on loopback that greets
// like a hub and hands each message it reads to a script.
import { WebSocketServer } from 'ws';

export const quiet = { warn() {}, error() {}, info() {} };
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const msgs = (data) => { const m = JSON.parse(data.toString()); return Array.isArray(m) ? m : [m]; };

/** A hub that greets and hands each message, with the connection's number (from 1), to
 * script(ws, number, msg). */
export async function scriptedHub(script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  let count = 0;
  wss.on('connection', (ws) => {
    const number = ++count;
    ws.send(JSON.stringify({ op: 'welcome', protocol: 1, max_frame: 1 << 20, max_batch: 1000 }));
    ws.on('message', (data) => { for (const m of msgs(data)) script(ws, number, m); });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }),
  };
}
