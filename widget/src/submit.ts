// Sending one signature to intake, and what its answer means for the supporter.
//
// One Idempotency-Key per submission: every retry of it (429, 503, a lost connection)
// carries the same key, so intake answers a retry with the first answer and a
// signature is never counted twice.  429 and 503 are retried after Retry-After (or a
// growing, jittered delay when there is none), a few times, then the supporter is told.

export interface SignatureBody {
  first_name: string;
  last_name: string;
  email: string;
  country: string;
  postal_code?: string;
  locale?: string;
  action?: string;
  consent: { updates: boolean };
  source?: { widget?: string; page_url?: string; referrer?: string };
  website?: string;
  turnstile_token?: string;
}

export type FieldErrors = Record<string, string>;

export type Outcome =
  | { kind: "accepted"; pendingConfirmation: boolean; replayed: boolean }
  | { kind: "invalid"; fields: FieldErrors; other: string[] }
  | { kind: "ended"; caseStatus: string; headline: Record<string, string> | null }
  | { kind: "unknown-case" }
  | { kind: "refused"; humanCheck: boolean; detail: string }
  | { kind: "busy" }
  | { kind: "network" };

export interface Transport {
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  sleep: (ms: number) => Promise<void>;
  random: () => number;
  /** Told before each wait, with the seconds the supporter will wait. */
  onWait?: (seconds: number) => void;
}

export const MAX_ATTEMPTS = 4;
const MAX_WAIT_S = 30;

/** Seconds to wait before attempt `attempt + 1` (1-based), honouring a Retry-After header. */
export function retryDelay(attempt: number, retryAfter: string | null, random: () => number): number {
  const announced = retryAfter === null ? NaN : Number(retryAfter.trim());
  if (Number.isFinite(announced) && announced >= 0) {
    // Spread the crowd that was told the same number: up to a second more.
    return Math.min(MAX_WAIT_S, announced + random());
  }
  if (retryAfter) {
    const at = Date.parse(retryAfter);
    if (Number.isFinite(at)) return Math.min(MAX_WAIT_S, Math.max(0, (at - Date.now()) / 1000));
  }
  const base = Math.min(MAX_WAIT_S, 2 ** (attempt - 1));
  return base / 2 + random() * (base / 2);
}

/** The problem's `errors` ([{field, message}]) by the form's field names; others apart. */
export function fieldErrors(errors: unknown): { fields: FieldErrors; other: string[] } {
  const fields: FieldErrors = {};
  const other: string[] = [];
  if (!Array.isArray(errors)) return { fields, other };
  for (const error of errors) {
    if (!error || typeof error !== "object") continue;
    const { field, message } = error as { field?: unknown; message?: unknown };
    if (typeof field !== "string" || typeof message !== "string") continue;
    const name = field === "consent.updates" || field === "consent" ? "consent" : field.split(".")[0];
    if (["first_name", "last_name", "email", "country", "postal_code", "action"].includes(name) || name === "consent") {
      fields[name] = fields[name] ? `${fields[name]}; ${message}` : message;
    } else {
      other.push(`${field}: ${message}`);
    }
  }
  return { fields, other };
}

/** A fresh key for one submission (random, 32 hex digits). */
export function newIdempotencyKey(random: () => number = Math.random): string {
  const bytes = new Uint8Array(16);
  if (typeof crypto !== "undefined" && crypto.getRandomValues) {
    crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  }
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The signatures URL of a case, carrying the widget key so the preflight is judged by it. */
export function signaturesUrl(intake: string, caseId: string, widgetKey: string | null): string {
  const url = `${intake}/v1/cases/${encodeURIComponent(caseId)}/signatures`;
  return widgetKey ? `${url}?widget_key=${encodeURIComponent(widgetKey)}` : url;
}

/** Send `body` until intake gives a definite answer, or retries run out. */
export async function submitSignature(
  url: string,
  body: SignatureBody,
  idempotencyKey: string,
  widgetKey: string | null,
  transport: Transport,
): Promise<Outcome> {
  const headers: Record<string, string> = { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey };
  if (widgetKey) headers["X-Clameur-Widget"] = widgetKey;
  for (let attempt = 1; ; attempt++) {
    let response: Response;
    try {
      response = await transport.fetch(url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        mode: "cors",
        credentials: "omit",
      });
    } catch {
      return { kind: "network" };
    }
    if (response.status === 429 || response.status === 503) {
      if (attempt >= MAX_ATTEMPTS) return { kind: "busy" };
      const wait = retryDelay(attempt, response.headers.get("Retry-After"), transport.random);
      transport.onWait?.(Math.max(1, Math.round(wait)));
      await transport.sleep(wait * 1000);
      continue;
    }
    return outcomeOf(response.status, await readJson(response), response.headers.get("Idempotent-Replayed") === "true");
  }
}

/** What a final answer of intake means (pure; `document` is its JSON body, if any). */
export function outcomeOf(status: number, document: Record<string, unknown>, replayed = false): Outcome {
  if (status >= 200 && status < 300) {
    return { kind: "accepted", pendingConfirmation: document.status === "pending_confirmation", replayed };
  }
  if (status === 422) return { kind: "invalid", ...fieldErrors(document.errors) };
  if (status === 410) {
    const headline = document.headline && typeof document.headline === "object" ? (document.headline as Record<string, string>) : null;
    return { kind: "ended", caseStatus: String(document.case_status || "closed"), headline };
  }
  if (status === 404) return { kind: "unknown-case" };
  if (status === 429 || status === 503 || status >= 500) return { kind: "busy" };
  const detail = typeof document.detail === "string" ? document.detail : "";
  return { kind: "refused", humanCheck: /human check/i.test(detail), detail };
}

async function readJson(response: Response): Promise<Record<string, unknown>> {
  try {
    const parsed: unknown = await response.json();
    return parsed && typeof parsed === "object" ? (parsed as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
