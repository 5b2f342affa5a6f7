// A minimal ACE Bridge client (protocol 2 handshake, §4), written from docs/protocol.md alone (no look at the Python sources):
// it proves the document is enough for a client in another language.
//
//   node client.mjs URL TOKEN                       hello, welcome, one `inpaint` job, ack, close; exit 0 on success
//   node client.mjs URL TOKEN --expect-unauthorized  hello with this (wrong) token must get error{unauthorized} and
//                                                    close 1008 "unauthorized"; exit 0 when it does
// Any deviation from the document prints "FAIL: ..." and exits 1.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import process from "node:process";

import { decode, encode } from "@msgpack/msgpack";
import WebSocket from "ws";

const [url, token, mode] = process.argv.slice(2);
if (!url || token === undefined || (mode !== undefined && mode !== "--expect-unauthorized")) {
  console.error("usage: node client.mjs URL TOKEN [--expect-unauthorized]");
  process.exit(2);
}

class Failure extends Error {}
const fail = (message) => {
  throw new Failure(message);
};
const check = (condition, message) => {
  if (!condition) fail(message);
};

// One connection: binary msgpack frames in, one decoded map per frame, in arrival order (§1).
class Connection {
  constructor(ws) {
    this.ws = ws;
    this.inbox = [];
    this.waiter = null;
    this.closed = null; // {code, reason} once closed
    ws.on("message", (data, isBinary) => {
      if (!isBinary) return this.push({ error: new Failure("daemon sent a text frame (§1: binary only)") });
      let message;
      try {
        message = decode(data);
      } catch (exc) {
        return this.push({ error: new Failure(`undecodable frame: ${exc.message}`) });
      }
      if (message === null || typeof message !== "object" || typeof message.type !== "string") {
        return this.push({ error: new Failure(`frame is not a map with a string "type": ${JSON.stringify(message)}`) });
      }
      this.push({ message });
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.push({ closed: this.closed });
    });
    ws.on("error", (exc) => this.push({ error: new Failure(`websocket error: ${exc.message}`) }));
  }

  push(item) {
    this.inbox.push(item);
    if (this.waiter) {
      const wake = this.waiter;
      this.waiter = null;
      wake();
    }
  }

  // The next item: {message}, {closed}, or throws on an error / timeout.
  async nextItem(timeoutMs, what) {
    while (this.inbox.length === 0) {
      let timer;
      const arrived = new Promise((resolve) => {
        this.waiter = resolve;
      });
      const expired = new Promise((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const outcome = await Promise.race([arrived, expired]);
      clearTimeout(timer);
      if (outcome === "timeout") fail(`no frame within ${timeoutMs / 1000} s while waiting for ${what}`);
    }
    const item = this.inbox.shift();
    if (item.error) throw item.error;
    return item;
  }

  async next(timeoutMs, what) {
    const item = await this.nextItem(timeoutMs, what);
    if (item.closed) fail(`connection closed (${item.closed.code} ${item.closed.reason}) while waiting for ${what}`);
    return item.message;
  }

  send(message) {
    this.ws.send(encode(message)); // Uint8Array -> msgpack bin, string -> str (§1, §13)
  }

  async close() {
    if (this.closed) return;
    const done = new Promise((resolve) => this.ws.once("close", resolve));
    this.ws.close(1000, "bye");
    await done;
  }
}

async function connect() {
  // §1: no compression; §4: the token is never sent (no Authorization header, no token in hello).
  const ws = new WebSocket(url, {
    perMessageDeflate: false,
    handshakeTimeout: 5000,
  });
  const opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("unexpected-response", (_req, res) => reject(new Failure(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.once("error", (exc) => reject(new Failure(`cannot connect to ${url}: ${exc.message}`)));
  });
  await opened;
  return new Connection(ws);
}

// §4 protocol 2: proof(role) = hex HMAC-SHA256(token, "ace-bridge/2 " + role + " " + Nc + " " + Ns).
const proof = (role, nc, ns) => createHmac("sha256", token).update(`ace-bridge/2 ${role} ${nc} ${ns}`).digest("hex");
const tokenId = () => createHash("sha256").update(`ace-bridge/2 token-id ${token}`).digest("hex").slice(0, 16);

// hello, the daemon's challenge (its proof checked before anything else is sent), our proof; returns the answer
// after it (welcome or error). `proveAnyway` sends our proof even when the daemon's does not match (to see the
// daemon's refusal of a wrong token, as the document describes it).
async function handshake(conn, clientId, extra = {}, proveAnyway = false) {
  const nc = randomBytes(16).toString("hex");
  conn.send({
    type: "hello",
    client_id: clientId,
    client_name: "ace-bridge-node-test",
    client_version: "0.1.0",
    protocol_versions: [2],
    editor: "node",
    nonce: nc,
    token_id: tokenId(),
    id: "h1",
    ...extra,
  });
  const challenge = await conn.next(30000, "challenge");
  if (challenge.type !== "challenge") return challenge;
  check(typeof challenge.nonce === "string" && typeof challenge.proof === "string", "challenge without nonce/proof");
  const expected = Buffer.from(proof("server", nc, challenge.nonce));
  const given = Buffer.from(challenge.proof);
  if (!(given.length === expected.length && timingSafeEqual(given, expected)) && !proveAnyway) {
    fail("handshake refused: unauthorized (the daemon's proof does not match this token; nothing more was sent)");
  }
  conn.send({ type: "prove", proof: proof("client", nc, challenge.nonce) });
  return conn.next(30000, "welcome");
}

// --- images (§6): raw rgba8 region, gray8 elliptical mask ---------------------------------------------------------
const W = 64;
const H = 48;

function gradientImage() {
  const data = new Uint8Array(W * H * 4);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = (y * W + x) * 4; // rows top to bottom, no padding
      data[i] = Math.round((x * 255) / (W - 1));
      data[i + 1] = Math.round((y * 255) / (H - 1));
      data[i + 2] = 128;
      data[i + 3] = 255;
    }
  }
  return { w: W, h: H, format: "rgba8", data };
}

function ellipseMask() {
  const data = new Uint8Array(W * H);
  const cx = (W - 1) / 2;
  const cy = (H - 1) / 2;
  const rx = W * 0.35;
  const ry = H * 0.35;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2;
      data[y * W + x] = d <= 1 ? 255 : 0;
    }
  }
  return { w: W, h: H, format: "gray8", data };
}

// --- the job run ---------------------------------------------------------------------------------------------------
async function runJob() {
  const clientId = `node-${randomBytes(6).toString("hex")}`;
  const conn = await connect();
  const welcome = await handshake(conn, clientId);
  if (welcome.type === "error") fail(`handshake refused: ${welcome.code}: ${welcome.message}`);
  check(welcome.type === "welcome", `expected welcome, got ${welcome.type}`);
  check(welcome.protocol_version === 2, `welcome.protocol_version ${welcome.protocol_version}`);
  check(typeof welcome.session === "string" && welcome.session.length > 0, "welcome.session missing");
  check(welcome.id === "h1", `welcome.id ${welcome.id} (expected hello.id echoed)`);
  check(Array.isArray(welcome.tasks), "welcome.tasks is not a list");
  const taskNames = welcome.tasks.map((t) => t.name);
  console.log(`welcome server_version=${welcome.server_version} session=${welcome.session} engine=${welcome.engine?.state}`);
  console.log(`tasks: ${taskNames.join(" ")}`);
  check(taskNames.includes("inpaint"), "inpaint is not among the available tasks");
  const inpaint = welcome.tasks.find((t) => t.name === "inpaint");
  const paramNames = inpaint.params.map((p) => p.name);
  check(paramNames.includes("seed") && paramNames.includes("steps"), `inpaint params: ${paramNames}`);
  check(Array.isArray(welcome.pending) && welcome.pending.length === 0, "a new client_id has pending jobs");

  const image = gradientImage();
  const mask = ellipseMask();
  const seed = 1234;
  const steps = 2;
  conn.send({
    type: "submit",
    id: "r1",
    task: "inpaint",
    prompt: inpaint.prompt_template,
    image,
    mask,
    params: { seed, steps },
    label: "node client test",
  });

  const accepted = await conn.next(30000, "accepted");
  if (accepted.type === "failed") fail(`submit refused: ${accepted.code}: ${accepted.message}`);
  check(accepted.type === "accepted", `expected accepted, got ${JSON.stringify(accepted)}`);
  check(accepted.id === "r1", `accepted.id ${accepted.id}`);
  check(/^[0-9a-f]{32}$/.test(accepted.job_id), `accepted.job_id ${accepted.job_id}`);
  check(accepted.seed === seed, `accepted.seed ${accepted.seed} != ${seed}`);
  check(Number.isInteger(accepted.position) && accepted.position >= 0, `accepted.position ${accepted.position}`);
  const jobId = accepted.job_id;
  console.log(`accepted job_id=${jobId} position=${accepted.position} seed=${accepted.seed}`);

  // accepted -> (queued)* -> started -> progress x steps -> result -> done   (§7 "Events of a job")
  let stage = "queued";
  let lastStep = 0;
  let result = null;
  for (;;) {
    const event = await conn.next(120000, `job events (after ${stage})`);
    check(event.job_id === jobId, `event for another job: ${JSON.stringify(event)}`);
    if (event.type === "failed" || event.type === "cancelled") {
      fail(`job ended ${event.type}: ${event.code ?? ""} ${event.message ?? ""}`);
    }
    if (event.type === "queued") {
      check(stage === "queued", `queued after ${stage}`);
      console.log(`queued position=${event.position}`);
    } else if (event.type === "started") {
      check(stage === "queued", `started after ${stage}`);
      stage = "started";
      console.log("started");
    } else if (event.type === "progress") {
      check(stage === "started" || stage === "progress", `progress after ${stage}`);
      stage = "progress";
      check(event.total === steps, `progress.total ${event.total} != steps ${steps}`);
      check(event.step === lastStep + 1, `progress.step ${event.step} after ${lastStep}`);
      check((event.image_index ?? 0) === 0, `progress.image_index ${event.image_index}`);
      check(event.preview === undefined || event.preview === null, "preview sent although hello.previews is false");
      lastStep = event.step;
      console.log(`progress ${event.step}/${event.total} eta_s=${event.eta_s}`);
    } else if (event.type === "result") {
      check(stage === "progress" && lastStep === steps, `result after ${stage} step ${lastStep}`);
      stage = "result";
      result = event;
    } else if (event.type === "done") {
      check(stage === "result", `done after ${stage}`);
      console.log("done");
      break;
    } else {
      fail(`unexpected frame during the job: ${JSON.stringify(event)}`);
    }
  }

  // The result (§6): rgba8, the region's size, alpha 0 wherever the mask is 0.
  check(result.index === 0 && result.count === 1, `result index ${result.index} count ${result.count}`);
  check(result.seed === seed, `result.seed ${result.seed}`);
  const out = result.image;
  check(out.format === "rgba8", `result format ${out.format}`);
  check(out.w === W && out.h === H, `result size ${out.w}x${out.h} != ${W}x${H}`);
  check(out.data instanceof Uint8Array && out.data.length === W * H * 4, `result data length ${out.data?.length}`);
  let inside = 0;
  let insideOpaque = 0;
  let outsideNonzero = 0;
  for (let p = 0; p < W * H; p++) {
    const alpha = out.data[p * 4 + 3];
    if (mask.data[p] === 0) {
      if (alpha !== 0) outsideNonzero++;
    } else {
      inside++;
      if (alpha === 255) insideOpaque++;
    }
  }
  check(outsideNonzero === 0, `${outsideNonzero} pixels outside the mask have alpha != 0`);
  check(insideOpaque > 0, "no pixel inside the mask is opaque");
  check(result.provenance && result.provenance.task === "inpaint", "result.provenance.task is not inpaint");
  console.log(`result ${out.w}x${out.h} rgba8 seed=${result.seed}: alpha 0 outside the mask, ${insideOpaque}/${inside} opaque inside`);

  conn.send({ type: "ack", job_ids: [jobId] }); // no reply (§7)
  // A status request after the ack: its reply proves the daemon has read the ack frame before we close.
  conn.send({ type: "status", id: "s1" });
  const status = await conn.next(30000, "status_reply");
  check(status.type === "status_reply" && status.id === "s1", `expected status_reply, got ${JSON.stringify(status)}`);
  check(!status.queue.some((j) => j.job_id === jobId), "finished job still in status_reply.queue");
  console.log("acked");
  await conn.close();
  console.log(`closed ${conn.closed.code}`);

  // Reconnect with the same client_id and session: resumed, and the acked job is not redelivered (§4, §7).
  const again = await connect();
  // §4 step 6: the first holder of a client_id got a client_secret; resuming that id needs it.
  const welcome2 = await handshake(again, clientId, { session: welcome.session, client_secret: welcome.client_secret });
  check(welcome2.type === "welcome", `expected welcome, got ${JSON.stringify(welcome2)}`);
  check(welcome2.session === welcome.session, "session changed across connections");
  check(welcome2.resumed === true, "welcome.resumed is not true for the same session");
  check(welcome2.pending.length === 0, `acked job redelivered: pending ${welcome2.pending}`);
  await again.close();
  console.log("resumed without redelivery");
  console.log("OK");
}

// --- the wrong-token run ---------------------------------------------------------------------------------------------
async function runUnauthorized() {
  const conn = await connect();
  const first = await handshake(conn, `node-${randomBytes(6).toString("hex")}`, {}, true);
  check(first.type === "error", `expected error, got ${JSON.stringify(first)}`);
  check(first.code === "unauthorized", `error.code ${first.code}`);
  console.log(`error ${first.code}: ${first.message}`);
  const end = await conn.nextItem(30000, "the close");
  check(end.closed !== undefined, `expected the close, got ${JSON.stringify(end.message)}`);
  check(end.closed.code === 1008 && end.closed.reason === "unauthorized", `close ${end.closed.code} ${end.closed.reason}`);
  console.log(`closed ${end.closed.code} ${end.closed.reason}`);
  console.log("OK unauthorized");
}

const overall = setTimeout(() => {
  console.error("FAIL: overall timeout (240 s)");
  process.exit(1);
}, 240000);

try {
  await (mode === "--expect-unauthorized" ? runUnauthorized() : runJob());
  clearTimeout(overall);
  process.exit(0);
} catch (exc) {
  console.error(`FAIL: ${exc instanceof Failure ? exc.message : exc.stack}`);
  process.exit(1);
}
