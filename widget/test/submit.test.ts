import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_ATTEMPTS, type SignatureBody, fieldErrors, newIdempotencyKey, outcomeOf, retryDelay, signaturesUrl, submitSignature } from "../src/submit";

const BODY: SignatureBody = { first_name: "Camille", last_name: "Durand", email: "c@example.org", country: "FR", consent: { updates: false } };

function answer(status: number, body: object = {}, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function recorder(answers: (Response | Error)[]) {
  const calls: { url: string; init: RequestInit }[] = [];
  const waits: number[] = [];
  return {
    calls,
    waits,
    transport: {
      fetch: async (url: string, init: RequestInit) => {
        calls.push({ url, init });
        const next = answers.shift();
        if (!next) throw new Error("no more answers");
        if (next instanceof Error) throw next;
        return next;
      },
      sleep: async (ms: number) => {
        waits.push(ms);
      },
      random: () => 0,
    },
  };
}

test("Retry-After is honoured, else the wait doubles", () => {
  assert.equal(retryDelay(1, "3", () => 0), 3);
  assert.equal(retryDelay(1, "3", () => 0.5), 3.5);
  assert.equal(retryDelay(1, "600", () => 0), 30, "capped");
  assert.equal(retryDelay(1, null, () => 1), 1);
  assert.equal(retryDelay(3, null, () => 1), 4);
  assert.equal(retryDelay(3, null, () => 0), 2);
});

test("a 429 then a 202: retried with the same Idempotency-Key after Retry-After", async () => {
  const r = recorder([answer(429, {}, { "Retry-After": "2" }), answer(503, {}, { "Retry-After": "1" }), answer(202, { status: "accepted" })]);
  const outcome = await submitSignature("https://intake/x", BODY, "key-1", "pk_1", r.transport);
  assert.deepEqual(outcome, { kind: "accepted", pendingConfirmation: false, replayed: false });
  assert.equal(r.calls.length, 3);
  const keys = r.calls.map((call) => (call.init.headers as Record<string, string>)["Idempotency-Key"]);
  assert.deepEqual(keys, ["key-1", "key-1", "key-1"]);
  assert.equal((r.calls[0].init.headers as Record<string, string>)["X-Clameur-Widget"], "pk_1");
  assert.deepEqual(r.waits, [2000, 1000]);
  assert.deepEqual(JSON.parse(String(r.calls[0].init.body)), BODY);
});

test("retries run out: the supporter is told, nothing more is sent", async () => {
  const r = recorder(Array.from({ length: MAX_ATTEMPTS + 2 }, () => answer(503, {}, { "Retry-After": "1" })));
  assert.deepEqual(await submitSignature("u", BODY, "k", null, r.transport), { kind: "busy" });
  assert.equal(r.calls.length, MAX_ATTEMPTS);
});

test("the network down is its own outcome (the form keeps what was typed)", async () => {
  const r = recorder([new TypeError("Failed to fetch")]);
  assert.deepEqual(await submitSignature("u", BODY, "k", null, r.transport), { kind: "network" });
});

test("a confirmation case's answer asks to check the inbox", () => {
  assert.deepEqual(outcomeOf(202, { status: "pending_confirmation" }), { kind: "accepted", pendingConfirmation: true, replayed: false });
});

test("a 422's errors go to their fields; unknown fields apart", () => {
  const outcome = outcomeOf(422, {
    errors: [
      { field: "first_name", message: "must not contain a web address" },
      { field: "consent.updates", message: "Input should be a valid boolean" },
      { field: "email", message: "a" },
      { field: "email", message: "b" },
      { field: "Idempotency-Key", message: "invalid header" },
    ],
  });
  assert.deepEqual(outcome, {
    kind: "invalid",
    fields: { first_name: "must not contain a web address", consent: "Input should be a valid boolean", email: "a; b" },
    other: ["Idempotency-Key: invalid header"],
  });
  assert.deepEqual(fieldErrors("nonsense"), { fields: {}, other: [] });
});

test("a 410 carries the case's status and victory headline", () => {
  assert.deepEqual(outcomeOf(410, { case_status: "won", headline: { fr: "Libre !" } }), {
    kind: "ended",
    caseStatus: "won",
    headline: { fr: "Libre !" },
  });
  assert.deepEqual(outcomeOf(410, {}), { kind: "ended", caseStatus: "closed", headline: null });
  assert.deepEqual(outcomeOf(404, {}), { kind: "unknown-case" });
  assert.equal(outcomeOf(403, { detail: "The human check failed; please..." }).kind, "refused");
  assert.deepEqual(outcomeOf(403, { detail: "The human check failed" }), { kind: "refused", humanCheck: true, detail: "The human check failed" });
});

test("keys are fresh and printable; the URL carries the widget key for the preflight", () => {
  const a = newIdempotencyKey();
  assert.match(a, /^[0-9a-f]{32}$/);
  assert.notEqual(a, newIdempotencyKey());
  assert.equal(signaturesUrl("https://i", "nawal", "pk_a b"), "https://i/v1/cases/nawal/signatures?widget_key=pk_a%20b");
  assert.equal(signaturesUrl("https://i", "nawal", null), "https://i/v1/cases/nawal/signatures");
});
