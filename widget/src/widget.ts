// The two elements a page may hold: the petition (title, counter, form, answers) and
// the counter alone.  Each renders into its own shadow root; neither touches the page.

import { CATALOGUES, type Catalogue, type Lang, countryOptions, formatCount, guessCountry, localized } from "./i18n";
import { type CaseDocument, type CaseWatcher, watchCase } from "./live";
import { progressOf } from "./progress";
import { applyStyles } from "./styles";
import { type FieldErrors, type Outcome, type SignatureBody, newIdempotencyKey, signaturesUrl, submitSignature } from "./submit";

export interface WidgetConfig {
  caseId: string;
  lang: Lang;
  widgetKey: string | null;
  intake: string;
  reads: string;
  postalCode: "required" | "optional" | null;
  turnstileSiteKey: string | null;
  widgetName: string | null;
}

type Attrs = Record<string, string | boolean | null | undefined>;

/** A small element builder: attributes (false/null left out) and children. */
function h(tag: string, attrs: Attrs = {}, ...children: (Node | string | null)[]): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null) element.append(child);
  return element;
}

/** The counter: total, a bar towards the next milestone (then the goal), and what comes next. */
class CounterView {
  readonly element: HTMLElement;
  private readonly count: HTMLElement;
  private readonly bar: HTMLElement;
  private readonly fill: HTMLElement;
  private readonly next: HTMLElement;

  constructor(private readonly t: Catalogue, private readonly lang: Lang) {
    this.count = h("p", { class: "count", "aria-live": "polite", "aria-atomic": "true" });
    this.fill = h("div", { class: "fill" });
    this.bar = h("div", { class: "bar", role: "progressbar", "aria-label": t.progressLabel, "aria-valuemin": "0" }, this.fill);
    this.next = h("p", { class: "next" });
    this.element = h("div", { class: "counter" }, this.count, this.bar, this.next);
  }

  update(document: CaseDocument): void {
    const total = document.total || 0;
    const formatted = formatCount(total, this.lang);
    const [number, ...rest] = this.t.signatures(formatted, total).split(formatted);
    this.count.replaceChildren(number, h("strong", {}, formatted), rest.join(formatted));
    const progress = progressOf(total, document.milestones || [], document.goal || 0);
    // Set through the CSSOM: allowed under a CSP that refuses inline style attributes.
    // The first signatures of a large goal still show as a sliver of colour.
    const percent = progress.ratio > 0 ? Math.max(progress.ratio * 100, 1.5) : 0;
    this.fill.style.width = `${percent.toFixed(1)}%`;
    this.bar.setAttribute("aria-valuemax", String(progress.target));
    this.bar.setAttribute("aria-valuenow", String(Math.min(total, progress.target)));
    this.bar.setAttribute("aria-valuetext", `${formatted} / ${formatCount(progress.target, this.lang)}`);
    const target = formatCount(progress.target, this.lang);
    // A won or closed case has no next step to show.
    this.next.hidden = document.status !== "open";
    this.next.textContent =
      progress.kind === "milestone" ? this.t.nextMilestone(target) : progress.kind === "goal" ? this.t.goal(target) : this.t.goalReached;
  }
}

function mountShadow(host: HTMLElement, lang: Lang): { root: ShadowRoot; box: HTMLElement } {
  const root = host.shadowRoot || host.attachShadow({ mode: "open" });
  applyStyles(root);
  const box = h("div", { class: "box", lang });
  root.replaceChildren(box);
  return { root, box };
}

export function mountCounter(host: HTMLElement, config: WidgetConfig): void {
  const t = CATALOGUES[config.lang];
  const { box } = mountShadow(host, config.lang);
  const counter = new CounterView(t, config.lang);
  box.replaceChildren(h("p", {}, t.loading));
  watchCase(config.reads, config.caseId).listen((document, error) => {
    if (error === "unknown") box.replaceChildren(h("p", {}, t.unknownCase));
    if (!document) return;
    if (!counter.element.isConnected) box.replaceChildren(counter.element);
    counter.update(document);
  });
}

const TEXT_FIELDS = ["first_name", "last_name", "email"] as const;

export class Petition {
  private readonly t: Catalogue;
  private readonly box: HTMLElement;
  private readonly watcher: CaseWatcher;
  private readonly counter: CounterView;
  private readonly title = h("h2", { id: "title" });
  private form: HTMLFormElement | null = null;
  private statusLine: HTMLElement | null = null;
  private submitButton: HTMLButtonElement | null = null;
  private endedPanel: HTMLElement | null = null;
  private sending = false;
  private pending: { body: string; key: string } | null = null;
  private turnstileToken: string | null = null;
  private caseLocales: string[] = [];

  constructor(private readonly host: HTMLElement, private readonly config: WidgetConfig) {
    this.t = CATALOGUES[config.lang];
    this.box = mountShadow(host, config.lang).box;
    this.counter = new CounterView(this.t, config.lang);
    this.box.replaceChildren(h("p", { role: "status" }, this.t.loading));
    this.watcher = watchCase(config.reads, config.caseId);
    this.watcher.listen((document, error) => this.show(document, error));
  }

  private show(document: CaseDocument | null, error?: string): void {
    if (error === "unknown") {
      this.box.replaceChildren(h("p", { role: "status" }, this.t.unknownCase));
      return;
    }
    if (!document) return;
    this.caseLocales = document.locales || [];
    this.title.textContent = localized(document.title, this.config.lang, document.default_locale);
    if (!this.title.isConnected) this.box.replaceChildren(this.title, this.counter.element);
    this.counter.update(document);
    if (document.status === "won" && !document.victory) return; // its headline is being fetched
    if (document.status !== "open") {
      this.showEnded(document.status, document.victory?.headline || null, document.victory?.message || null);
      return;
    }
    if (!this.form && !this.endedPanel && !this.box.querySelector(".done")) this.box.append(this.buildForm(document));
  }

  // -- the form ------------------------------------------------------------------------------

  private buildForm(document: CaseDocument): HTMLFormElement {
    const t = this.t;
    const field = (name: string, label: string, input: HTMLElement, required: boolean, cls = "field"): HTMLElement => {
      input.setAttribute("id", `f-${name}`);
      input.setAttribute("name", name);
      input.setAttribute("aria-describedby", `e-${name}`);
      if (required) input.setAttribute("required", "");
      return h(
        "div",
        { class: cls },
        h("label", { for: `f-${name}` }, label, required ? h("span", { class: "req" }, ` (${t.required})`) : null),
        input,
        h("p", { class: "error", id: `e-${name}` }),
      );
    };
    const country = h("select", { autocomplete: "country" }) as HTMLSelectElement;
    country.append(h("option", { value: "" }, t.chooseCountry));
    const guessed = guessCountry(navigator.languages || [navigator.language]);
    for (const [code, name] of countryOptions(this.config.lang)) {
      country.append(h("option", { value: code, selected: code === guessed }, name));
    }
    const children: HTMLElement[] = [
      field("first_name", t.firstName, h("input", { type: "text", autocomplete: "given-name", maxlength: "100" }), true, "field half"),
      field("last_name", t.lastName, h("input", { type: "text", autocomplete: "family-name", maxlength: "100" }), true, "field half"),
      field("email", t.email, h("input", { type: "email", autocomplete: "email", inputmode: "email", maxlength: "320", spellcheck: "false" }), true),
      field("country", t.country, country, true, "field half"),
    ];
    const postal = this.config.postalCode || document.postal_code || null;
    if (postal) {
      children.push(
        field("postal_code", t.postalCode, h("input", { type: "text", autocomplete: "postal-code", maxlength: "20" }), postal === "required", "field half"),
      );
    }
    const actions = document.actions || ["signature"];
    if (actions.length > 1) {
      const select = h("select", {});
      for (const action of actions) select.append(h("option", { value: action }, t.actions[action] || action));
      children.push(field("action", t.action, select, false));
    }
    const consent = h("input", { type: "checkbox", id: "f-consent", name: "consent", value: "updates", "aria-describedby": "e-consent" });
    children.push(
      h("div", { class: "field" }, h("div", { class: "check" }, consent, h("label", { for: "f-consent" }, t.consent)), h("p", { class: "error", id: "e-consent" })),
    );
    // The honeypot: out of sight and out of the tab order; only bots fill it in.
    children.push(
      h(
        "div",
        { class: "hp", "aria-hidden": "true" },
        h("label", { for: "f-website" }, t.honeypot),
        h("input", { type: "text", id: "f-website", name: "website", tabindex: "-1", autocomplete: "off" }),
      ),
    );
    if (this.config.turnstileSiteKey) children.push(this.turnstileSlot(this.config.turnstileSiteKey));
    this.submitButton = h("button", { type: "submit" }, t.submit) as HTMLButtonElement;
    children.push(h("div", { class: "field" }, this.submitButton));
    this.statusLine = h("p", { class: "status", role: "status", "aria-live": "polite" });
    children.push(this.statusLine);
    const form = h("form", { novalidate: true, "aria-labelledby": "title" }, ...children) as HTMLFormElement;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.submit();
    });
    this.form = form;
    return form;
  }

  private turnstileSlot(siteKey: string): HTMLElement {
    const slot = h("div", { class: "field" });
    const render = (): void => {
      const turnstile = (window as unknown as { turnstile?: { render: (el: HTMLElement, options: object) => void } }).turnstile;
      turnstile?.render(slot, {
        sitekey: siteKey,
        language: this.config.lang,
        callback: (token: string) => {
          this.turnstileToken = token;
        },
      });
    };
    if ((window as unknown as { turnstile?: unknown }).turnstile) render();
    else {
      const src = "https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit";
      let script = document.querySelector(`script[src="${src}"]`) as HTMLScriptElement | null;
      if (!script) {
        script = document.createElement("script");
        script.src = src;
        script.async = true;
        document.head.append(script);
      }
      script.addEventListener("load", render);
    }
    return slot;
  }

  private input(name: string): HTMLInputElement | HTMLSelectElement | null {
    return this.form?.querySelector(`[name="${name}"]`) as HTMLInputElement | HTMLSelectElement | null;
  }

  private body(): SignatureBody {
    const value = (name: string): string => (this.input(name)?.value || "").trim();
    const body: SignatureBody = {
      first_name: value("first_name"),
      last_name: value("last_name"),
      email: value("email"),
      country: value("country"),
      consent: { updates: (this.input("consent") as HTMLInputElement).checked },
      // A language the case does not speak is refused; the case's default is then used.
      locale: this.caseLocales.includes(this.config.lang) ? this.config.lang : undefined,
      source: {
        widget: (this.config.widgetName || this.config.widgetKey || "clameur-widget").slice(0, 100),
        // The page without its query string: campaign pages' queries may carry tokens.
        page_url: (location.origin + location.pathname).slice(0, 2048),
      },
    };
    if (document.referrer) body.source!.referrer = document.referrer.split("?")[0].slice(0, 2048);
    if (this.input("postal_code")) body.postal_code = value("postal_code") || undefined;
    if (this.input("action")) body.action = value("action");
    const website = this.input("website")?.value;
    if (website) body.website = website;
    if (this.turnstileToken) body.turnstile_token = this.turnstileToken;
    return body;
  }

  private checkLocally(body: SignatureBody): FieldErrors {
    const errors: FieldErrors = {};
    for (const name of TEXT_FIELDS) if (!body[name]) errors[name] = this.t.invalid[name];
    if (body.email && !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(body.email)) errors.email = this.t.invalid.email;
    if (!body.country) errors.country = this.t.invalid.country;
    if (this.config.postalCode === "required" && !body.postal_code) errors.postal_code = this.t.invalid.postal_code;
    return errors;
  }

  private showFieldErrors(errors: FieldErrors, fromServer: boolean): void {
    let first: HTMLElement | null = null;
    for (const input of Array.from(this.form?.querySelectorAll("[aria-describedby]") || [])) {
      const name = input.getAttribute("name") || "";
      const slot = this.form?.querySelector(`#e-${name}`);
      const message = errors[name];
      if (message) {
        input.setAttribute("aria-invalid", "true");
        first = first || (input as HTMLElement);
      } else input.removeAttribute("aria-invalid");
      if (!slot) continue;
      slot.replaceChildren();
      if (!message) continue;
      // The server's words are English; other readers get the catalogue's words first.
      if (fromServer && this.config.lang !== "en") {
        slot.append(this.t.invalid[name] || "", " ", h("span", { lang: "en" }, `(${message})`));
      } else slot.append(fromServer ? capitalise(message) : message);
    }
    first?.focus();
  }

  private setStatus(text: string, kind: "" | "problem" | "busy" = ""): void {
    if (!this.statusLine) return;
    this.statusLine.className = `status ${kind}`.trim();
    this.statusLine.textContent = text;
  }

  private async submit(): Promise<void> {
    if (this.sending || !this.form) return;
    const body = this.body();
    const local = this.checkLocally(body);
    this.showFieldErrors(local, false);
    if (Object.keys(local).length) {
      this.setStatus(this.t.fixFields, "problem");
      return;
    }
    // A resend of the same answers (after "no connection", say) is the same submission.
    const serialized = JSON.stringify(body);
    if (!this.pending || this.pending.body !== serialized) this.pending = { body: serialized, key: newIdempotencyKey() };
    this.sending = true;
    this.submitButton!.disabled = true;
    this.submitButton!.textContent = this.t.sending;
    this.setStatus(this.t.sending);
    let outcome: Outcome;
    try {
      outcome = await submitSignature(
        signaturesUrl(this.config.intake, this.config.caseId, this.config.widgetKey),
        body,
        this.pending.key,
        this.config.widgetKey,
        {
          fetch: (url, init) => fetch(url, init),
          sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
          random: Math.random,
          onWait: (seconds) => this.setStatus(this.t.busyRetrying(seconds), "busy"),
        },
      );
    } finally {
      this.sending = false;
      if (this.submitButton) {
        this.submitButton.disabled = false;
        this.submitButton.textContent = this.t.submit;
      }
    }
    this.handle(outcome);
  }

  private handle(outcome: Outcome): void {
    const t = this.t;
    switch (outcome.kind) {
      case "accepted": {
        this.pending = null;
        const pending = outcome.pendingConfirmation;
        this.replaceForm(
          h(
            "div",
            { class: "done", role: "status" },
            h("h3", { tabindex: "-1" }, pending ? t.confirmTitle : t.thanksTitle),
            h("p", {}, pending ? t.confirmText : t.thanksText),
          ),
        );
        return;
      }
      case "invalid":
        this.pending = null;
        this.showFieldErrors(outcome.fields, true);
        this.setStatus([t.fixFields, ...outcome.other].join(" "), "problem");
        return;
      case "ended":
        this.showEnded(outcome.caseStatus, outcome.headline, null);
        void this.watcher.refresh();
        return;
      case "unknown-case":
        this.setStatus(t.unknownCase, "problem");
        return;
      case "refused":
        this.pending = null;
        this.setStatus(outcome.humanCheck ? t.humanCheck : t.refused, "problem");
        return;
      case "busy":
        this.setStatus(t.busyGaveUp, "problem");
        return;
      case "network":
        this.setStatus(t.networkDown, "problem");
        return;
    }
  }

  private replaceForm(panel: HTMLElement): void {
    if (this.form) this.form.replaceWith(panel);
    else this.box.append(panel);
    this.form = null;
    this.statusLine = null;
    (panel.querySelector("[tabindex]") as HTMLElement | null)?.focus();
  }

  private showEnded(status: string, headline: Record<string, string> | null, message: Record<string, string> | null): void {
    const lang = this.config.lang;
    const panel =
      status === "won"
        ? h(
            "div",
            { class: "ended", role: "status" },
            h("h3", { class: "victory", tabindex: "-1" }, `${this.t.victoryLead} ${localized(headline, lang, "en")}`.trim()),
            message ? h("p", {}, localized(message, lang, "en")) : null,
            h("p", {}, this.t.noNeed),
          )
        : h("div", { class: "ended closed", role: "status" }, h("p", { tabindex: "-1" }, this.t.closed));
    if (this.endedPanel && this.endedPanel.textContent === panel.textContent) return;
    const root = this.host.shadowRoot;
    const hadFocus = Boolean(root && root.activeElement);
    // The victory takes the place of the form, the thank-you, or an earlier panel.
    const previous = this.endedPanel || this.form || this.box.querySelector(".done");
    if (previous) previous.replaceWith(panel);
    else this.box.append(panel);
    this.form = null;
    this.statusLine = null;
    this.endedPanel = panel;
    if (hadFocus) (panel.querySelector("[tabindex]") as HTMLElement | null)?.focus();
  }
}

function capitalise(text: string): string {
  return text ? text[0].toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".") : text;
}
