// Official TypeScript MCP client (@modelcontextprotocol/sdk 1.32.2) for the sidecar's tests:
// connects WITHOUT credentials, lists tools, calls `echo` (and optionally `slow`), terminates the
// session (DELETE), prints one JSON line; exit 0 on success, 1 with {"ok":false,"error":...}.
//
// usage: node node_client.mjs URL [--slow] [--timeout SECONDS] [--token-env NAME]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const args = process.argv.slice(2);
const url = args[0];
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const timeoutMs = Number(opt("--timeout") ?? 30) * 1000;
const tokenEnv = opt("--token-env");

async function run() {
  const started = performance.now();
  const headers = tokenEnv ? { Authorization: `Bearer ${process.env[tokenEnv]}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const client = new Client({ name: "civic-sidecar-test-client", version: "1.0.0" });
  await client.connect(transport);
  const out = { ok: false, client: "node-sdk-1.32.2", connect_ms: Math.round(performance.now() - started) };
  out.protocol_version = transport.protocolVersion;
  out.session = Boolean(transport.sessionId);
  const tools = await client.listTools();
  out.tools = tools.tools.map((t) => t.name).sort();
  const res = await client.callTool({ name: "echo", arguments: { text: "hello through the sidecar" } });
  out.echo = res.content.map((c) => c.text ?? "").join("");
  if (args.includes("--slow")) {
    const progress = [];
    const slow = await client.callTool({ name: "slow", arguments: { steps: 3, delay_ms: 100 } }, undefined, {
      onprogress: (p) => progress.push(p.progress),
    });
    out.slow = slow.content.map((c) => c.text ?? "").join("");
    out.progress = progress;
  }
  await transport.terminateSession();
  await client.close();
  out.ok = true;
  out.total_ms = Math.round(performance.now() - started);
  return out;
}

const timer = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: `timed out after ${timeoutMs} ms` }));
  process.exit(1);
}, timeoutMs);

run()
  .then((out) => {
    clearTimeout(timer);
    console.log(JSON.stringify(out));
    process.exit(0);
  })
  .catch((e) => {
    clearTimeout(timer);
    console.log(JSON.stringify({ ok: false, error: `${e?.name ?? "Error"}: ${e?.message ?? e}`, code: e?.code }));
    process.exit(1);
  });
