// A case's public document, kept current: tally's Server-Sent Events, and when they
// cannot be had (a proxy that buffers, an old browser, the stream failing), polling the
// cacheable GET.  Every widget of one case on a page shares one watcher.

export interface CaseDocument {
  id: string;
  title: Record<string, string>;
  status: "open" | "won" | "closed" | string;
  goal: number;
  milestones: number[];
  actions: string[];
  locales: string[];
  default_locale: string;
  total: number;
  victory?: { headline: Record<string, string>; message: Record<string, string> } | null;
  postal_code?: "required" | "optional" | null;
}

export type CaseListener = (document: CaseDocument | null, error?: "unknown" | "unreachable") => void;

export const POLL_INTERVAL_MS = 5_000;
const STREAM_FAILURES_BEFORE_POLLING = 2;

/** A count event's moving parts merged into the document; true when a full refetch is due. */
export function mergeCount(document: CaseDocument, event: Partial<CaseDocument>): { next: CaseDocument; refetch: boolean } {
  const next = { ...document };
  if (typeof event.total === "number") next.total = event.total;
  const statusChanged = typeof event.status === "string" && event.status !== document.status;
  if (statusChanged) next.status = event.status as string;
  return { next, refetch: statusChanged };
}

class CaseWatcher {
  private document: CaseDocument | null = null;
  private readonly listeners = new Set<CaseListener>();
  private stream: EventSource | null = null;
  private streamFailures = 0;
  private pollTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly reads: string,
    private readonly caseId: string,
  ) {}

  listen(listener: CaseListener): void {
    this.listeners.add(listener);
    if (this.document) listener(this.document);
    if (this.listeners.size === 1) void this.start();
  }

  /** Read the whole document again now (after a victory answer, say). */
  async refresh(): Promise<void> {
    await this.fetchDocument(true);
  }

  private get url(): string {
    return `${this.reads}/v1/cases/${encodeURIComponent(this.caseId)}`;
  }

  private async start(): Promise<void> {
    if (!(await this.fetchDocument())) {
      this.schedulePoll();
      return;
    }
    this.openStream();
  }

  private emit(error?: "unknown" | "unreachable"): void {
    for (const listener of this.listeners) listener(this.document, error);
  }

  /** `fresh`: revalidate (ETag) rather than take the browser's cached copy, which may
   * predate the change the stream just announced. */
  private async fetchDocument(fresh = false): Promise<boolean> {
    try {
      const response = await fetch(this.url, { mode: "cors", credentials: "omit", cache: fresh ? "no-cache" : "default" });
      if (response.status === 404) {
        this.emit("unknown");
        return false;
      }
      if (!response.ok) throw new Error(String(response.status));
      this.document = (await response.json()) as CaseDocument;
      this.emit();
      return true;
    } catch {
      if (!this.document) this.emit("unreachable");
      return false;
    }
  }

  private openStream(): void {
    if (typeof EventSource === "undefined") {
      this.schedulePoll();
      return;
    }
    const stream = new EventSource(`${this.url}/live`);
    this.stream = stream;
    stream.addEventListener("count", (event) => {
      this.streamFailures = 0;
      let data: Partial<CaseDocument>;
      try {
        data = JSON.parse((event as MessageEvent<string>).data) as Partial<CaseDocument>;
      } catch {
        return;
      }
      if (!this.document) return;
      const { next, refetch } = mergeCount(this.document, data);
      this.document = next;
      this.emit();
      if (refetch) void this.fetchDocument(true);
    });
    stream.addEventListener("error", () => {
      // EventSource reconnects by itself; after repeated failures poll instead.
      this.streamFailures += 1;
      if (this.streamFailures >= STREAM_FAILURES_BEFORE_POLLING || stream.readyState === EventSource.CLOSED) {
        stream.close();
        this.stream = null;
        this.schedulePoll();
      }
    });
  }

  private schedulePoll(): void {
    if (this.pollTimer !== null) return;
    this.pollTimer = setTimeout(async () => {
      this.pollTimer = null;
      const known = this.document !== null;
      const ok = await this.fetchDocument();
      // The first success after a failed start tries the stream again; after that, poll.
      if (ok && !known && this.stream === null && this.streamFailures === 0) this.openStream();
      else this.schedulePoll();
    }, POLL_INTERVAL_MS);
  }
}

const watchers = new Map<string, CaseWatcher>();

export function watchCase(reads: string, caseId: string): CaseWatcher {
  const key = `${reads} ${caseId}`;
  let watcher = watchers.get(key);
  if (!watcher) {
    watcher = new CaseWatcher(reads, caseId);
    watchers.set(key, watcher);
  }
  return watcher;
}

export type { CaseWatcher };
