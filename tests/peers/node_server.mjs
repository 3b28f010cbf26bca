// Legacy-only MCP upstream on the official TypeScript SDK (@modelcontextprotocol/sdk 1.32.2),
// the closest stand-in for the Civic hub: Streamable HTTP 2025-11-25 with a session map,
// GET stream and DELETE. Accepts only tokens the fake Civic Auth issued (HS256 with the shared
// key, `iss` the fake auth, not expired). Logs each request's headers as JSON lines (bearer as a
// digest). Prints `LISTENING port=<n>`.
//
// usage: node node_server.mjs [--port N] [--header-log FILE]
import { createHash, createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { appendFileSync } from "node:fs";
import { createServer } from "node:http";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";

// Same constants as testkit/src/secrets.rs.
const JWT_KEY = process.env.CIVIC_TEST_JWT_KEY ?? "civic-testkit-hs256-shared-key-for-tests-only";
const AUTH_ISSUER = process.env.CIVIC_TEST_AUTH_ISSUER ?? "https://auth.civic.test";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(opt("--port") ?? 0);
const headerLog = opt("--header-log");

const b64d = (s) => Buffer.from(s, "base64url");

function verifyCivicToken(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const want = createHmac("sha256", JWT_KEY).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = b64d(parts[2]);
  if (sig.length !== want.length || !timingSafeEqual(sig, want)) return null;
  try {
    if (JSON.parse(b64d(parts[0]).toString()).alg !== "HS256") return null;
    const claims = JSON.parse(b64d(parts[1]).toString());
    if (claims.iss !== AUTH_ISSUER) return null;
    if (claims.exp !== undefined && claims.exp <= Date.now() / 1000) return null;
    return claims;
  } catch {
    return null;
  }
}

const digest = (t) => "sha256:" + createHash("sha256").update(t).digest("hex");

function logExchange(req, res) {
  if (!headerLog) return;
  const headers = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i];
    let value = req.rawHeaders[i + 1];
    if (name.toLowerCase() === "authorization") {
      const [scheme, rest] = value.split(" ", 2);
      value = rest ? `${scheme} ${digest(rest)}` : digest(value);
    }
    headers.push([name, value]);
  }
  const url = new URL(req.url, "http://x");
  const entry = {
    method: req.method,
    path: url.pathname,
    query: url.search.replace(/^\?/, ""),
    headers,
    status: res.statusCode,
    response_headers: Object.entries(res.getHeaders()).map(([k, v]) => [k, String(v)]),
  };
  appendFileSync(headerLog, JSON.stringify(entry) + "\n");
}

function newServer() {
  const server = new McpServer({ name: "civic-test-legacy-upstream", version: "1.0.0" });
  server.registerTool(
    "echo",
    { description: "Return the text unchanged.", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text }] }),
  );
  server.registerTool(
    "slow",
    {
      description: "Report progress `steps` times, `delay_ms` apart, then finish.",
      inputSchema: { steps: z.number().int(), delay_ms: z.number().int() },
    },
    async ({ steps, delay_ms }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 0; i < steps; i++) {
        if (token !== undefined) {
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken: token, progress: i + 1, total: steps, message: `step ${i + 1}` },
          });
        }
        await new Promise((r) => setTimeout(r, delay_ms));
      }
      return { content: [{ type: "text", text: `done after ${steps} steps` }] };
    },
  );
  return server;
}

const transports = new Map();

function jsonError(res, status, code, message, extraHeaders = {}) {
  res.writeHead(status, { "content-type": "application/json", ...extraHeaders });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code, message }, id: null }));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks).toString();
  return raw ? JSON.parse(raw) : undefined;
}

const http = createServer(async (req, res) => {
  res.on("finish", () => logExchange(req, res));
  res.on("close", () => {
    if (!res.writableFinished) logExchange(req, res);
  });
  try {
    const url = new URL(req.url, "http://x");
    if (url.pathname !== "/hub/mcp") return jsonError(res, 404, -32601, "not found");
    const auth = req.headers.authorization ?? "";
    const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
    if (!verifyCivicToken(token)) {
      const host = req.headers.host ?? `127.0.0.1:${port}`;
      res.writeHead(401, {
        "content-type": "application/json",
        "www-authenticate": `Bearer error="invalid_token", error_description="Authentication required", resource_metadata="http://${host}/.well-known/oauth-protected-resource/hub/mcp"`,
      });
      return res.end(JSON.stringify({ error: "invalid_token", error_description: "Authentication required" }));
    }
    const sid = req.headers["mcp-session-id"];
    if (req.method === "POST") {
      const body = await readBody(req);
      let transport = sid ? transports.get(sid) : undefined;
      if (!transport) {
        if (sid || !isInitializeRequest(body)) {
          return sid
            ? jsonError(res, 404, -32001, "Session not found")
            : jsonError(res, 400, -32000, "Bad Request: Server not initialized");
        }
        transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          onsessioninitialized: (id) => transports.set(id, transport),
        });
        transport.onclose = () => {
          if (transport.sessionId) transports.delete(transport.sessionId);
        };
        await newServer().connect(transport);
      }
      return await transport.handleRequest(req, res, body);
    }
    if (req.method === "GET" || req.method === "DELETE") {
      const transport = sid ? transports.get(sid) : undefined;
      if (!transport) return jsonError(res, sid ? 404 : 400, -32000, sid ? "Session not found" : "Missing session ID");
      return await transport.handleRequest(req, res);
    }
    return jsonError(res, 405, -32000, "Method not allowed", { allow: "GET, POST, DELETE" });
  } catch (e) {
    if (!res.headersSent) jsonError(res, 500, -32603, `internal error: ${e?.message ?? e}`);
  }
});

http.listen(port, "127.0.0.1", () => {
  console.log(`LISTENING port=${http.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
